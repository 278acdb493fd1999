//! The API reference (docs/api/reference.md), rendered from the comments of
//! `proto/` as kept in [`crate::FILE_DESCRIPTOR_SET`] (source info included).
//!
//! Only the `kiops.identity.v1` package is rendered; services in file
//! order, messages and enums by name, so the output is deterministic and
//! a test can compare it with the committed file byte for byte.

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The package the reference covers.
pub const PACKAGE: &str = "kiops.identity.v1";

/// Where the rendered reference is committed, relative to the workspace root.
pub const OUTPUT_PATH: &str = "docs/api/reference.md";

/// The command that regenerates [`OUTPUT_PATH`].
pub const REGENERATE: &str = "cargo run -p kiops-proto --bin api-reference -- --write";

// Field numbers of descriptor.proto, as they appear in source-info paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_ONEOF: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

/// Leading comments of one file, by source-info path.
struct Comments(BTreeMap<Vec<i32>, String>);

impl Comments {
    fn of(file: &FileDescriptorProto) -> Self {
        let mut map = BTreeMap::new();
        for loc in file.source_code_info.iter().flat_map(|info| &info.location) {
            if let Some(c) = &loc.leading_comments {
                map.insert(loc.path.clone(), c.clone());
            }
        }
        Comments(map)
    }

    /// The comment's lines, each without the one space after `//`, trailing
    /// blank lines dropped.
    fn lines(&self, path: &[i32]) -> Vec<String> {
        let Some(text) = self.0.get(path) else {
            return Vec::new();
        };
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_string())
            .collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// The comment as Markdown paragraphs.
    fn block(&self, path: &[i32]) -> String {
        let lines = self.lines(path);
        if lines.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        for l in lines {
            out.push_str(&escape(&l, false));
            out.push('\n');
        }
        out.push('\n');
        out
    }

    /// The comment on one line, for a table cell: paragraphs and list items
    /// separated by `<br>`.
    fn cell(&self, path: &[i32]) -> String {
        let mut out = String::new();
        let mut blank = false;
        for l in self.lines(path) {
            if l.is_empty() {
                blank = true;
                continue;
            }
            if !out.is_empty() {
                if blank {
                    out.push_str("<br><br>");
                } else if l.starts_with("- ") {
                    out.push_str("<br>");
                } else {
                    out.push(' ');
                }
            }
            blank = false;
            out.push_str(&escape(&l, true));
        }
        out
    }
}

/// Text outside code spans gets `<` and `>` escaped (so `<id>` is not taken
/// for HTML); in a table cell `|` is escaped everywhere.
fn escape(text: &str, cell: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            '|' if cell => out.push_str("\\|"),
            _ => out.push(c),
        }
    }
    out
}

/// A message or enum of the package, with where its comments are.
struct Item<'a, T> {
    /// Name inside the package (`Outer.Inner` for nested types).
    name: String,
    desc: &'a T,
    path: Vec<i32>,
    file: usize,
}

struct Package<'a> {
    comments: Vec<Comments>,
    services: Vec<(usize, usize, &'a ServiceDescriptorProto)>,
    messages: Vec<Item<'a, DescriptorProto>>,
    enums: Vec<Item<'a, EnumDescriptorProto>>,
    /// Map entry messages by full name (`.pkg.Outer.FooEntry`): rendered
    /// as `map<K, V>`, not as messages.
    map_entries: BTreeMap<String, &'a DescriptorProto>,
}

impl<'a> Package<'a> {
    fn collect(set: &'a FileDescriptorSet) -> Self {
        let mut p = Package {
            comments: Vec::new(),
            services: Vec::new(),
            messages: Vec::new(),
            enums: Vec::new(),
            map_entries: BTreeMap::new(),
        };
        let files = set
            .file
            .iter()
            .filter(|f| f.package.as_deref() == Some(PACKAGE));
        for (fi, file) in files.enumerate() {
            p.comments.push(Comments::of(file));
            for (si, s) in file.service.iter().enumerate() {
                p.services.push((fi, si, s));
            }
            for (mi, m) in file.message_type.iter().enumerate() {
                p.add_message(fi, String::new(), vec![FILE_MESSAGE, mi as i32], m);
            }
            for (ei, e) in file.enum_type.iter().enumerate() {
                p.enums.push(Item {
                    name: e.name().to_string(),
                    desc: e,
                    path: vec![FILE_ENUM, ei as i32],
                    file: fi,
                });
            }
        }
        p.messages.sort_by(|a, b| a.name.cmp(&b.name));
        p.enums.sort_by(|a, b| a.name.cmp(&b.name));
        p
    }

    fn add_message(&mut self, file: usize, prefix: String, path: Vec<i32>, m: &'a DescriptorProto) {
        let name = format!("{prefix}{}", m.name());
        if m.options.as_ref().and_then(|o| o.map_entry) == Some(true) {
            self.map_entries.insert(format!(".{PACKAGE}.{name}"), m);
            return;
        }
        for (ni, n) in m.nested_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([MESSAGE_NESTED, ni as i32]);
            self.add_message(file, format!("{name}."), p, n);
        }
        for (ei, e) in m.enum_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([MESSAGE_ENUM, ei as i32]);
            self.enums.push(Item {
                name: format!("{name}.{}", e.name()),
                desc: e,
                path: p,
                file,
            });
        }
        self.messages.push(Item {
            name,
            desc: m,
            path,
            file,
        });
    }

    /// A type reference (`.pkg.Name`) as Markdown: a link for the package's
    /// own types, code for the others.
    fn type_link(&self, full: &str) -> String {
        match full.strip_prefix(&format!(".{PACKAGE}.")) {
            Some(local) => format!("[{local}](#{})", anchor(local)),
            None => format!("`{}`", full.trim_start_matches('.')),
        }
    }

    fn field_type(&self, f: &FieldDescriptorProto) -> String {
        match f.r#type() {
            Type::Message | Type::Enum | Type::Group => {
                if let Some(entry) = self.map_entries.get(f.type_name()) {
                    let k = entry.field.iter().find(|x| x.number() == 1);
                    let v = entry.field.iter().find(|x| x.number() == 2);
                    if let (Some(k), Some(v)) = (k, v) {
                        return format!(
                            "map&lt;{}, {}&gt;",
                            self.field_type(k),
                            self.field_type(v)
                        );
                    }
                }
                self.type_link(f.type_name())
            }
            t => format!("`{}`", scalar(t)),
        }
    }
}

fn scalar(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "message",
    }
}

/// A type name as written in a `.proto` of the package: package-local
/// names without the package, others fully qualified.
fn short(full: &str) -> &str {
    let full = full.trim_start_matches('.');
    full.strip_prefix(PACKAGE)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(full)
}

/// The HTML anchor of a package-local name.
fn anchor(local: &str) -> String {
    local.to_ascii_lowercase().replace('.', "-")
}

fn heading(out: &mut String, level: usize, local: &str, title: &str) {
    let _ = writeln!(
        out,
        "{} <a id=\"{}\"></a>{title}\n",
        "#".repeat(level),
        anchor(local)
    );
}

/// Renders the reference of [`crate::FILE_DESCRIPTOR_SET`].
pub fn render() -> String {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built by build.rs decodes");
    render_set(&set)
}

/// Renders the reference of any descriptor set that holds [`PACKAGE`].
pub fn render_set(set: &FileDescriptorSet) -> String {
    let p = Package::collect(set);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# `{PACKAGE}` API reference\n\n\
         <!-- Generated from proto/ by `{REGENERATE}`. Do not edit by hand. -->\n\n\
         Generated from the comments of the `.proto` files in `proto/kiops/identity/v1/`, \
         which are the contract: SDKs generated from them carry the same text.\n\n\
         Errors carry a `google.rpc.ErrorInfo` whose `reason` is one of [ErrorReason](#{}) \
         (without its `ERROR_REASON_` prefix) and whose `domain` is `identity.kiops.io`.\n",
        anchor("ErrorReason")
    );

    out.push_str("## Contents\n\n- [Services](#services)\n");
    for (_, _, s) in &p.services {
        let _ = writeln!(out, "  - [{0}](#{1})", s.name(), anchor(s.name()));
    }
    out.push_str("- [Messages](#messages)\n");
    for m in &p.messages {
        let _ = writeln!(out, "  - [{0}](#{1})", m.name, anchor(&m.name));
    }
    out.push_str("- [Enums](#enums)\n");
    for e in &p.enums {
        let _ = writeln!(out, "  - [{0}](#{1})", e.name, anchor(&e.name));
    }
    out.push('\n');

    out.push_str("## Services\n\n");
    for &(fi, si, s) in &p.services {
        let c = &p.comments[fi];
        let spath = vec![FILE_SERVICE, si as i32];
        heading(&mut out, 3, s.name(), s.name());
        out.push_str(&c.block(&spath));
        for (mi, m) in s.method.iter().enumerate() {
            let mut mpath = spath.clone();
            mpath.extend([SERVICE_METHOD, mi as i32]);
            let local = format!("{}.{}", s.name(), m.name());
            heading(&mut out, 4, &local, m.name());
            let stream = |yes: bool| if yes { "stream " } else { "" };
            let _ = writeln!(
                out,
                "`rpc {}({}{}) returns ({}{})`\n",
                m.name(),
                stream(m.client_streaming()),
                short(m.input_type()),
                stream(m.server_streaming()),
                short(m.output_type()),
            );
            let mut kind = match (m.client_streaming(), m.server_streaming()) {
                (false, false) => "unary",
                (false, true) => "server streaming",
                (true, false) => "client streaming",
                (true, true) => "bidirectional streaming",
            }
            .to_string();
            kind.replace_range(..1, &kind[..1].to_ascii_uppercase());
            let _ = writeln!(
                out,
                "{kind}. Request: {}. Response: {}.\n",
                p.type_link(m.input_type()),
                p.type_link(m.output_type()),
            );
            out.push_str(&c.block(&mpath));
        }
    }

    out.push_str("## Messages\n\n");
    for m in &p.messages {
        let c = &p.comments[m.file];
        heading(&mut out, 3, &m.name, &m.name);
        out.push_str(&c.block(&m.path));
        let oneof_name = |f: &FieldDescriptorProto| {
            if f.proto3_optional() {
                return None;
            }
            f.oneof_index
                .and_then(|i| m.desc.oneof_decl.get(i as usize))
                .map(|o| o.name().to_string())
        };
        if m.desc.field.is_empty() {
            out.push_str("No fields.\n\n");
        } else {
            out.push_str("| Field | Type | Label | Description |\n| --- | --- | --- | --- |\n");
            for (fi, f) in m.desc.field.iter().enumerate() {
                let mut fpath = m.path.clone();
                fpath.extend([MESSAGE_FIELD, fi as i32]);
                let is_map = p.map_entries.contains_key(f.type_name());
                let label = if let Some(o) = oneof_name(f) {
                    format!("oneof `{o}`")
                } else if f.proto3_optional() {
                    "optional".to_string()
                } else if f.label() == Label::Repeated && !is_map {
                    "repeated".to_string()
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {label} | {} |",
                    f.name(),
                    p.field_type(f),
                    c.cell(&fpath)
                );
            }
            out.push('\n');
        }
        for (oi, o) in m.desc.oneof_decl.iter().enumerate() {
            let synthetic = m
                .desc
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(oi as i32))
                .all(|f| f.proto3_optional());
            if synthetic {
                continue;
            }
            let mut opath = m.path.clone();
            opath.extend([MESSAGE_ONEOF, oi as i32]);
            let _ = writeln!(out, "Oneof `{}`: {}\n", o.name(), c.cell(&opath));
        }
    }

    out.push_str("## Enums\n\n");
    for e in &p.enums {
        let c = &p.comments[e.file];
        heading(&mut out, 3, &e.name, &e.name);
        out.push_str(&c.block(&e.path));
        out.push_str("| Value | Number | Description |\n| --- | --- | --- |\n");
        for (vi, v) in e.desc.value.iter().enumerate() {
            let mut vpath = e.path.clone();
            vpath.extend([ENUM_VALUE, vi as i32]);
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                v.name(),
                v.number(),
                c.cell(&vpath)
            );
        }
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
