"""``python -m bench.cold_probe MODULE EVENT_FILE``: import a handler and invoke it once, timed.

Runs in a fresh interpreter; prints one JSON line (seconds to import, seconds for the first
invocation). Nothing but the standard library is imported before the clock starts, and nothing of
the repository's tooling at all: the probe runs on a Lambda's dependencies alone (``bench.lambda_deps``).
"""

import json
import sys
import time


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name = "bench-cold-start"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench-cold-start"
    aws_request_id = "c0ffee00-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/bench-cold-start"
    log_stream_name = "cold"

    def __init__(self) -> None:
        self._deadline = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    module_name, event_path = sys.argv[1:3]
    with open(event_path) as fh:
        event = json.load(fh)
    modules_before = len(sys.modules)
    start, start_cpu = time.perf_counter(), time.process_time()
    module = __import__(module_name, fromlist=["lambda_handler"])
    imported, imported_cpu = time.perf_counter(), time.process_time()
    context = LambdaContext()
    invoke_start, invoke_start_cpu = time.perf_counter(), time.process_time()
    response = module.lambda_handler(event, context)
    invoked, invoked_cpu = time.perf_counter(), time.process_time()
    status = response.get("statusCode") if isinstance(response, dict) else None
    print(
        json.dumps(
            {
                "import_seconds": imported - start,
                "first_invocation_seconds": invoked - invoke_start,
                "import_cpu_seconds": imported_cpu - start_cpu,
                "first_invocation_cpu_seconds": invoked_cpu - invoke_start_cpu,
                "modules_loaded": len(sys.modules) - modules_before,
                "status": status,
                "batch_item_failures": len(response.get("batchItemFailures", []))
                if isinstance(response, dict)
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
