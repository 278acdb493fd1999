fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    sqlite_without_memory_statistics();
    // Exports the config file's lines as environment variables: done before
    // the runtime starts its threads, as setting variables requires.
    if let Err(e) = kiops_identity::config::apply_config_file_from_args() {
        eprintln!("kiops-identity: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = kiops_identity::cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let kiops_identity::config::Command::Serve(args) = &cli.command {
        if let Some(n) = args.worker_threads {
            runtime.worker_threads(usize::from(n));
        }
    }
    // Tokio runs a task woken by the running one next (the LIFO slot), which
    // suits message passing but not an HTTP/2 server: each request's task,
    // finishing, woke its connection's task, which then ran at once and
    // wrote that one response to the socket. In order instead, the
    // connection's task runs after the other requests read with it and
    // writes their responses together, and requests are answered in the
    // order they came. CheckPermission: 31,000 → 42,000 calls/s, server CPU
    // 32 → 23 µs a call, p99 1.9 → 1.3 ms (BENCHMARKS.md). Needs tokio's
    // unstable API (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiops-identity: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kiops_identity::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiops-identity: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own arena (up to 8 per core),
/// and the database drivers' worker threads, tokio's workers and the hashing
/// threads each fragmented theirs: the server's RSS grew round after round
/// in the benchmark. Rust's allocations now go to jemalloc (`GLOBAL`), but
/// SQLite's own still come from glibc; two arenas keep those flat at no
/// measurable cost. Set before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// SQLite counts every allocation in global statistics under one process-wide
/// mutex, which nothing here reads; with reads running on several threads at
/// once (`store::sqlite_direct`) that mutex was contended on every query.
/// Must run before SQLite initializes, i.e. before the first connection.
fn sqlite_without_memory_statistics() {
    // SAFETY: sqlite3_config is documented as callable before
    // sqlite3_initialize from one thread; this runs first in main, before
    // any thread or connection exists. MEMSTATUS takes one int.
    unsafe {
        libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as libc::c_int);
    }
}

/// Every request allocates and frees dozens of small buffers (HTTP/2
/// frames, headers, protobuf messages, the rows of a read); with glibc's
/// malloc that was 15% of the server's samples in the check-permission
/// profile, `malloc_consolidate` among them. With jemalloc's per-thread
/// caches the server spends 19 µs a check rather than 20 on SQLite and 22
/// rather than 24 on PostgreSQL, and SQLite check-permission went from 52%
/// to 57% of Health/Check's throughput, at 3–5 MiB more resident memory
/// (BENCHMARKS.md). mimalloc saved a little more CPU but kept pages
/// per thread: with a dozen sqlx SQLite worker threads it held 20–30 MiB
/// more, 146 MiB after two benchmark rounds against the 150 MB target.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
