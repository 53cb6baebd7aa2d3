"""``python -m prefill_worker``: runs one prefill worker process."""

from pdserve.worker_runtime import main

if __name__ == "__main__":
    main("prefill")
