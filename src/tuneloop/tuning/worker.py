"""A local worker process of ``executors.LocalExecutor``: ``python -m tuneloop.tuning.worker FD``, FD its end of
the socket pair the executor talks to it over."""

import multiprocessing.connection
import sys

from tuneloop.tuning.executors import worker_main

if __name__ == "__main__":
    worker_main(multiprocessing.connection.Connection(int(sys.argv[1])))
