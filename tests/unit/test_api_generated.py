import pickle
import subprocess
import sys
from pathlib import Path

from gemma_serving.api import inference_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto():
    result = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_messages_pickle_across_processes():
    # Ray pickles arguments between processes: the generated module name must be importable.
    request = pb.GenerateRequest(model="m", messages=[pb.Message(role="user", parts=[pb.Part(text="hi")])])
    assert pickle.loads(pickle.dumps(request)) == request
