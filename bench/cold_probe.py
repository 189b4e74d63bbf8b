"""``python -m bench.cold_probe MODULE EVENT_FILE``: import a handler and invoke it once, timed.

Runs in a fresh interpreter; prints one JSON line (seconds to import, seconds for the first
invocation). Nothing but the standard library is imported before the clock starts.
"""

import json
import sys
import time


def main() -> None:
    module_name, event_path = sys.argv[1:3]
    with open(event_path) as fh:
        event = json.load(fh)
    modules_before = len(sys.modules)
    start = time.perf_counter()
    module = __import__(module_name, fromlist=["lambda_handler"])
    imported = time.perf_counter()
    from fme_bridge.local.runtime import LambdaContext  # after the clock: not part of a handler

    context = LambdaContext(
        "bench-cold-start", 512, 60, "arn:aws:lambda:us-east-1:123456789012:function:bench"
    )
    invoke_start = time.perf_counter()
    response = module.lambda_handler(event, context)
    invoked = time.perf_counter()
    status = response.get("statusCode") if isinstance(response, dict) else None
    print(
        json.dumps(
            {
                "import_seconds": imported - start,
                "first_invocation_seconds": invoked - invoke_start,
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
