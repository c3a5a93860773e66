"""A gRPC client on gRPC's C core (Python grpcio), for autolb's tests: calls test.Echo at
ADDRESS (raw-bytes messages) and prints one JSON line of what it got."""

import json
import sys

import grpc

address = sys.argv[1]
payload = b"\x0a\x05hello"  # test.Echo's Msg { text: "hello" }
out = {}
with grpc.insecure_channel(address) as channel:
    unary = channel.unary_unary("/test.Echo/Unary")
    try:
        reply, call = unary.with_call(payload, timeout=10, metadata=(("x-client", "py"),))
        out["unary"] = reply.hex()
        out["trailers"] = {k: v for k, v in call.trailing_metadata()}
    except grpc.RpcError as e:
        out["unary_error"] = "%s: %s" % (e.code().name, e.details())
    stream = channel.unary_stream("/test.Echo/Stream")
    try:
        out["stream"] = [m.hex() for m in stream(payload, timeout=10)]
    except grpc.RpcError as e:
        out["stream_error"] = "%s: %s" % (e.code().name, e.details())
    chat = channel.stream_stream("/test.Echo/Chat")
    try:
        out["chat"] = [m.hex() for m in chat(iter([payload, payload]), timeout=10)]
    except grpc.RpcError as e:
        out["chat_error"] = "%s: %s" % (e.code().name, e.details())
print(json.dumps(out), flush=True)
