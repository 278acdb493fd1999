"""A protoc plugin wrapping grpcio-tools' built-in grpc_python generator.

grpcio-tools ships a protoc with the gRPC Python generator linked in but no
stand-alone plugin, which is what buf calls. This reads the
CodeGeneratorRequest, hands the same files to grpc_tools.protoc, and returns
what it wrote as a CodeGeneratorResponse.
"""

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main():
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        fds = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        descriptors = os.path.join(tmp, "in.pb")
        with open(descriptors, "wb") as f:
            f.write(fds.SerializeToString())
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        args = ["protoc", f"--descriptor_set_in={descriptors}", f"--grpc_python_out={out}"]
        args += list(request.file_to_generate)
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed"
        else:
            for dirpath, _, names in os.walk(out):
                for name in sorted(names):
                    path = os.path.join(dirpath, name)
                    generated = response.file.add()
                    generated.name = os.path.relpath(path, out)
                    with open(path) as f:
                        generated.content = f.read()
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
