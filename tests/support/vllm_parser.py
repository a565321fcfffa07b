"""vLLM's own server argument parser and its post-parse checks, as `vllm serve` runs them: the
tests that compose vLLM command lines (pdserve's and the chart's) parse them with it, so a
misspelt or dropped flag fails."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable


def vllm_server_parser() -> Callable[[list[str]], argparse.Namespace]:
    """A function parsing a vLLM server's arguments (without the program) and validating them."""
    with warnings.catch_warnings():  # torch and vLLM deprecations raised at import time
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm.entrypoints.launchers.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = make_arg_parser(FlexibleArgumentParser())

    def parse(args: list[str]) -> argparse.Namespace:
        parsed = parser.parse_args(args)
        validate_parsed_serve_args(parsed)
        return parsed

    return parse
