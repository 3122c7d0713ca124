"""``python -m shared.llama_serve <llama_cpp.server options>``: llama-cpp-python's OpenAI server,
returning freed memory to the OS (shared.memory_trim).

Why a wrapper: the server is llama-cpp-python's own program; its RSS rose by steps (460 -> 532 MB
over 2,000 soak turns) with nothing held for good. Everything else is the library's ``__main__``.
"""

from __future__ import annotations

import os
import runpy
import sys

from shared.memory_trim import start_trimmer

SERVER_MODULE = "llama_cpp.server"
NICE_ENV = "XZ_LLAMA_NICE"  # LaunchSpec.nice, set by shared.llama_server (not a llama_cpp.server option)


def main() -> None:
    os.nice(int(os.environ.pop(NICE_ENV, "0") or 0))
    start_trimmer()
    sys.argv[0] = SERVER_MODULE  # its argparse names itself after argv[0]
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
