"""The exit codes of `pipeline` besides 0 (success), 1 (an expected failure) and 2 (a bad invocation)."""

#: Some requests of the batch failed or were cancelled (the rest are stored).
EXIT_SOME_FAILED = 3
#: The job file has invalid lines; nothing was stored or sent.
EXIT_INVALID_INPUT = 4
#: The batch paused (for example the account ran out of quota); `pipeline resume` continues it.
EXIT_PAUSED = 5
#: The database refused writes (a full disk) for PIPELINE_WRITE_STALL_SECONDS: sending stopped, the batch
#: paused if that could still be written; `pipeline resume` (or the same command) continues once it takes
#: writes again.
EXIT_STALLED = 6
#: A bug in pipeline (an unexpected exception; its traceback was saved): sysexits' EX_SOFTWARE.
EXIT_BUG = 70
#: Interrupted by Ctrl-C (128 + SIGINT, as shells report it); running the same command again continues.
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM (128 + SIGTERM) after draining; running the same command again continues.
EXIT_TERMINATED = 143
