"""``python -m lm_eval_softreason ...``: the stock lm-eval CLI with ``softreason`` registered,
for environments where the start-up hook is off (``LM_EVAL_SOFTREASON_NO_HOOK=1``) or site
``.pth`` files are not processed. Same arguments as ``lm_eval``."""

from lm_eval_softreason import _hook

_hook.install()

from lm_eval.__main__ import cli_evaluate  # noqa: E402  (after the hook is in place)

if __name__ == "__main__":
    cli_evaluate()
