"""A gRPC server on gRPC's C core (Python grpcio), for autolb's tests: service test.Echo
with raw-bytes messages (no generated code). Prints its port on the first line.

- Unary: the request back, with trailing metadata x-trail: t-NAME.
- Stream (server streaming): the request back three times.
- Chat (bidi): each request back at once.
"""

import sys
from concurrent import futures

import grpc

NAME = sys.argv[1] if len(sys.argv) > 1 else "py"


def unary(request, context):
    context.set_trailing_metadata((("x-trail", "t-" + NAME),))
    return request


def stream(request, context):
    for _ in range(3):
        yield request


def chat(requests, context):
    for r in requests:
        yield r


handlers = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handlers,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
