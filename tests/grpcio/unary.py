"""One unary gRPC call with grpcio (the C-core gRPC, as Python operator tools use it).

usage: unary.py <unix socket path> <full method> <request as hex> [authority]
prints `OK <response as hex>` or `ERR <status code> <details>`; exits 0 either way
unless the call could not be made. grpcio sends the percent-encoded socket path as the
HTTP/2 :authority, unlike grpc-go (kubelet), which sends "localhost".
"""
import sys

import grpc


def main() -> int:
    path, method, request_hex = sys.argv[1], sys.argv[2], sys.argv[3]
    options = []
    if len(sys.argv) > 4:
        # What newer grpcio releases send by themselves for a unix: target.
        options.append(("grpc.default_authority", sys.argv[4]))
    with grpc.insecure_channel("unix://" + path, options=options) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            response = call(bytes.fromhex(request_hex), timeout=10)
        except grpc.RpcError as e:  # a status from the server or the transport
            print(f"ERR {e.code().name} {e.details()}")
            return 0
        print(f"OK {response.hex()}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
