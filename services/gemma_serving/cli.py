"""`gemma-serving` command: up, serve, down, status, generate, demo, build-models.

up, status, generate and demo reach the router the way the config says: over TLS when `security.tls` is set (the
server certificate trusted as root unless GEMMA_SERVING_TLS_CA names its CA; GEMMA_SERVING_TLS_CLIENT_CERT / _KEY for
mTLS) and with the API key in GEMMA_SERVING_API_KEY when `security.auth` is api_key (client/connection.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gemma_serving.config import default_config_path, load_config


def _cmd_build_models(args) -> int:
    from gemma_serving.models import build_models

    paths = build_models(args.cache_dir, progress=lambda msg: print(f"[build-models] {msg}", flush=True))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_new_api_key(args) -> int:
    from gemma_serving.router.auth import new_api_key

    key, key_hash = new_api_key()
    print(f"API key (give it to the client; it is not stored anywhere): {key}")
    print(f"hash (put it in the tenant's api_key_hashes):                {key_hash}")
    return 0


def _connection(args):
    """How to reach the configured platform: its address (or --target), its TLS, a key from the environment."""
    from gemma_serving.client.connection import connection_for

    return connection_for(load_config(args.config), getattr(args, "target", None))


def _cmd_up(args) -> int:
    from gemma_serving.local import up

    up(load_config(args.config), Path(args.config), _connection(args))
    return 0


def _cmd_serve(args) -> int:
    from gemma_serving.local import serve_forever

    serve_forever(load_config(args.config))
    return 0


def _cmd_down(args) -> int:
    from gemma_serving.local import down

    down(connection=_connection(args))
    return 0


def _cmd_status(args) -> int:
    from gemma_serving.local import status

    return status(_connection(args))


def _cmd_generate(args) -> int:
    from gemma_serving.client import GemmaClient, audio_part, image_part, message

    parts: list = []
    if args.image:
        parts.append(image_part(Path(args.image).read_bytes()))
    if args.audio:
        parts.append(audio_part(Path(args.audio).read_bytes()))
    parts.append(args.prompt)
    needs = {"text"} | ({"image"} if args.image else set()) | ({"audio"} if args.audio else set())
    connection = _connection(args)
    connection.require_api_key()
    with GemmaClient(connection.target, **connection.client_options()) as client:
        model = args.model or client.model_for(needs)
        if args.stream:
            for chunk in client.stream(model, [message(*parts)], max_tokens=args.max_tokens):
                print(chunk.text, end="", flush=True)
            print()
        else:
            reply = client.generate(model, [message(*parts)], max_tokens=args.max_tokens)
            print(reply.text)
    return 0


def _cmd_demo(args) -> int:
    from gemma_serving.api import inference_pb2 as pb
    from gemma_serving.client import GemmaClient, audio_part, image_part, message
    from gemma_serving.client.samples import sample_png, sample_wav

    cases = [
        ("text", {"text"}, [message("Write one sentence about the sea.")]),
        ("image+text", {"text", "image"}, [message(image_part(sample_png(), "image/png"), "Describe this image.")]),
        ("audio+text", {"text", "audio"}, [message(audio_part(sample_wav(), "audio/wav"), "Transcribe this audio.")]),
    ]
    connection = _connection(args)
    connection.require_api_key()
    print("(tiny random-weight models: the answers are gibberish by design; real checkpoints answer for real)")
    with GemmaClient(connection.target, **connection.client_options()) as client:
        for label, needs, messages in cases:
            model = client.model_for(needs)
            reply = client.generate(model, messages, max_tokens=args.max_tokens, temperature=0.0)
            print(f"--- {label} via {model}: {reply.usage.prompt_tokens} prompt tokens, "
                  f"{reply.usage.completion_tokens} generated, finish={pb.FinishReason.Name(reply.finish_reason)}")
            print(reply.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma-serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, *, config: bool = False, target: bool = False):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        if config:
            p.add_argument("--config", default=str(default_config_path()), help="platform config YAML")
        if target:
            p.add_argument("--config", default=str(default_config_path()),
                           help="platform config YAML (router address, TLS, whether a key is needed)")
            p.add_argument("--target", default=None, help="router address (default: the config's router host:port)")
        return p

    p = add("build-models", _cmd_build_models, "build the tiny local Gemma checkpoints")
    p.add_argument("--cache-dir", type=Path, default=None, help="where to build (default: the model cache)")
    add("new-api-key", _cmd_new_api_key, "print a new API key and the salted hash to configure")
    add("up", _cmd_up, "start the platform in the background (local Ray + the app)", config=True)
    add("serve", _cmd_serve, "run the platform in the foreground until SIGTERM", config=True)
    add("down", _cmd_down, "stop the background platform", config=True)
    add("status", _cmd_status, "show the app and router state", config=True)
    p = add("generate", _cmd_generate, "send one request", target=True)
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="model name (default: the first that accepts the inputs)")
    p.add_argument("--image", help="image file to send with the prompt")
    p.add_argument("--audio", help="audio file to send with the prompt")
    p.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    p.add_argument("--max-tokens", type=int, default=32)
    p = add("demo", _cmd_demo, "send one text, one image+text and one audio+text request", target=True)
    p.add_argument("--max-tokens", type=int, default=24)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a CLI prints one line, not a traceback
        import grpc

        if isinstance(exc, grpc.RpcError):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
