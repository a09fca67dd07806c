"""`gemma-serving` command: up, serve, down, status, metrics, generate, demo, finetune, adapters, build-models.

up, status, generate and demo reach the router the way the config says: over TLS when `security.tls` is set (the
server certificate trusted as root unless GEMMA_SERVING_TLS_CA names its CA; GEMMA_SERVING_TLS_CLIENT_CERT / _KEY for
mTLS) and with the API key in GEMMA_SERVING_API_KEY when `security.auth` is api_key (client/connection.py).
"""

from __future__ import annotations

import argparse
import os
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
            for chunk in client.stream(model, [message(*parts)], max_tokens=args.max_tokens, adapter=args.adapter):
                print(chunk.text, end="", flush=True)
            print()
        else:
            reply = client.generate(model, [message(*parts)], max_tokens=args.max_tokens, adapter=args.adapter)
            print(reply.text)
    return 0


def _cmd_metrics(args) -> int:
    import json
    import time

    from gemma_serving.telemetry import snapshot

    config = load_config(args.config)
    routers = args.router_metrics or [f"http://{config.router.host}:{config.telemetry.metrics_port}/metrics"]
    engines = args.engine_metrics or snapshot.ray_metrics_urls(Path(args.ray_discovery_file))

    def scrape_all():
        texts = [snapshot.scrape(url) for url in routers]
        for url in engines:  # a node without replicas or a restarting agent must not hide the router's numbers
            try:
                texts.append(snapshot.scrape(url))
            except OSError as exc:
                print(f"warning: engine metrics at {url} unreadable: {exc}", file=sys.stderr)
        return snapshot.parse(texts)

    samples = scrape_all()
    if args.window > 0:
        time.sleep(args.window)
        samples = snapshot.delta(samples, scrape_all())
    summary = snapshot.summarize(samples)
    if args.json:
        text = json.dumps({"window_s": args.window or None, "services": summary}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"wrote {args.json}")
    if args.json != "-":
        print(snapshot.format_table(summary))
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
    if not args.no_finetune:
        from gemma_serving.finetune.command import demo_finetune

        demo_finetune(load_config(args.config), connection.target, args.max_tokens,
                      client_options=connection.client_options())
    return 0


def _cmd_finetune(args) -> int:
    from gemma_serving.finetune.command import finetune_command

    return finetune_command(args, load_config(args.config))


def _cmd_adapters(args) -> int:
    from gemma_serving.client import GemmaClient

    with GemmaClient(args.target, api_key=os.environ.get(args.api_key_env) or None) as client:
        if args.action == "list":
            for model in client.list_models():
                print(f"{model.name}: {', '.join(model.adapters) or '(no adapters)'}")
            return 0
        model = args.model or client.model_for({"text"})
        if args.action == "register":
            if not args.source:
                raise ValueError("adapters register needs NAME and SOURCE (the PEFT adapter directory)")
            entry = client.register_adapter(model, args.name, args.source, replace=args.replace)
            print(f"registered adapter {entry.name} of {model} from {entry.source} (LoRA id {entry.lora_id})")
        else:
            entry = client.unregister_adapter(model, args.name)
            print(f"unregistered adapter {entry.name} of {model} (was {entry.source})")
    return 0


def _add_finetune_parser(add) -> None:
    p = add("finetune", _cmd_finetune, "LoRA fine-tune the text model as a Ray Train job and register the adapter",
            config=True, target=True)
    p.add_argument("--dataset", required=True, help="JSONL chat conversations: {\"messages\": [{role, content}]}")
    p.add_argument("--adapter", required=True, help="name to register the adapter under")
    p.add_argument("--model", default=None, help="model to adapt (default: the text service's model)")
    p.add_argument("--output", default=None, help="adapter directory (default: <adapter_registry>/<adapter>)")
    p.add_argument("--settings", default=None, help="YAML with lora:, training:, workers: (FinetuneSettings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. training.epochs=10 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter directory")
    p.add_argument("--replace", action="store_true", help="replace an existing registration of the name")
    p.add_argument("--no-register", action="store_true", help="only train and write the adapter")
    p.add_argument("--no-ray", action="store_true", help="train in this process instead of a Ray Train job")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or the local one)")
    p.add_argument("--api-key-env", default="GEMMA_API_KEY", help="environment variable holding an admin API key")
    p = add("adapters", _cmd_adapters, "list, register or unregister LoRA adapters (admin)", target=True)
    p.add_argument("action", choices=("list", "register", "unregister"))
    p.add_argument("name", nargs="?", default="", help="adapter name (register, unregister)")
    p.add_argument("source", nargs="?", default="", help="PEFT adapter directory or gs:// path (register)")
    p.add_argument("--model", default=None, help="model (default: the text model)")
    p.add_argument("--replace", action="store_true", help="replace an existing registration")
    p.add_argument("--api-key-env", default="GEMMA_API_KEY", help="environment variable holding an admin API key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma-serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, *, config: bool = False, target: bool = False):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        if config and not target:  # a target's --config also says how to reach the router
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
    p.add_argument("--adapter", default="", help="LoRA adapter of the model to use")
    p = add("metrics", _cmd_metrics, "print a per-service metrics summary (requests, success, latency, KV cache, "
            "quality)", config=True)
    p.add_argument("--router-metrics", action="append", help="router /metrics URL (repeat for several; default "
                   "from the config's router.host and telemetry.metrics_port)")
    p.add_argument("--engine-metrics", action="append", help="Ray metrics export URL of a node (repeat; default: "
                   "every node in Ray's Prometheus service-discovery file)")
    p.add_argument("--ray-discovery-file", default="/tmp/ray/prom_metrics_service_discovery.json",
                   help="Ray's Prometheus service-discovery file, listing each node's metrics export address")
    p.add_argument("--window", type=float, default=0.0,
                   help="seconds between two scrapes: counters and percentiles over that window (0: since start)")
    p.add_argument("--json", help="also write the summary as JSON to this file ('-': JSON only, on stdout)")
    p = add("demo", _cmd_demo, "send text, image+text and audio+text requests, then fine-tune and ask the adapter",
            target=True, config=True)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning step")
    _add_finetune_parser(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gemma_serving.finetune.ray_job import use_local_ray_token

    use_local_ray_token()  # before anything loads Ray: finetune and the demo join the local cluster
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
