"""zj_utils: the Zhongjing reproduction's library (README.md lists every module)."""
import logging as _logging


class _DropKernelsHubNotice(_logging.Filter):
    """bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a faster 4-bit kernel from the Hugging Face hub (the
    optional `kernels` package) and logs a warning when it cannot, then uses its own CPU kernel, which is what this
    project runs and tests. The warning is dropped so that it does not appear in every QLoRA stage and notebook."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# attached before bitsandbytes is imported (the logger is created here if it does not exist yet)
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHubNotice())
