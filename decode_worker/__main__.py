"""``python -m decode_worker``: runs one decode worker process."""

from pdserve.worker_runtime import main

if __name__ == "__main__":
    main("decode")
