"""`quantfid-sweep`: the Hydra app that runs a study.

    quantfid-sweep -m experiment=organism_study          # the organism cohort x the fidelity settings
    quantfid-sweep -m experiment=smoke                   # 3 quants on a handful of prompts (seconds)
    quantfid-sweep quant=rtn_w4g64 bench.limit=20        # one job; any config value is an override
    quantfid-sweep -m experiment=smoke hydra/launcher=joblib   # local parallel jobs

Each job: load reference -> quantize -> measure fidelity -> run benchmarks -> track (see quantfid.sweep.task).
"""

from __future__ import annotations

import signal
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from quantfid.api.paths import conf_dir
from quantfid.quant.config import cohort
from quantfid.sweep.callbacks import abort_sweep
from quantfid.sweep.configs import register_configs
from quantfid.sweep.task import run_job

#: The configs shipped with the package (or $QUANTFID_CONF_DIR): quantfid.api.paths.
CONF_DIR = str(conf_dir())


def _cohort(name: str) -> str:
    """``${cohort:organism}`` -> the cohort's quant names as one sweep value list (``reference,rtn_w8_g128,...``)."""
    return ",".join(cohort(name))


# Registered at import, before Hydra composes: experiment presets sweep `quant: ${cohort:organism}`, so the cohort has
# one source of truth (conf/cohort/<name>.yaml).
OmegaConf.register_new_resolver("cohort", _cohort, replace=True)
register_configs()



@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


def check_overrides(argv: list[str]) -> str | None:
    """The error for a command-line override that does not parse, naming it (Hydra's own message does not)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    known, _ = get_args_parser().parse_known_args(argv)
    parser = OverridesParser.create()
    for override in known.overrides or []:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            return (
                f"error: the override {override!r} does not parse: {err.message.splitlines()[0]}. Write key=value, "
                "key=a,b,c to sweep, or quote a value holding brackets/commas: 'key=\"[a,b]\"'. Grammar: "
                "https://hydra.cc/docs/advanced/override_grammar/basic/"
            )
    return None


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every open run is ended KILLED on the way out (not an Exception: a
    job's error handler must not record it as the job's failure)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def cli() -> None:
    """Console entry point: refuse an unparsable override with one clear line, then hand over to Hydra.

    Whatever breaks the sweep after its parent run was opened (a launcher error, SIGINT, SIGTERM) ends that run
    FAILED or KILLED here, never leaving it RUNNING.
    """
    problem = check_overrides(sys.argv[1:])
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main()
    except KeyboardInterrupt:
        abort_sweep("KILLED", "interrupted (SIGINT)")
        raise SystemExit(130) from None
    except Terminated:
        abort_sweep("KILLED", "terminated (SIGTERM)")
        raise SystemExit(143) from None
    except SystemExit as exc:
        if exc.code not in (0, None):
            abort_sweep("FAILED", f"the sweep stopped with exit status {exc.code} (see the error above)")
        raise
    except BaseException as exc:
        abort_sweep("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        abort_sweep("FAILED", "the sweep ended before its summary")  # no-op when end_sweep closed it


if __name__ == "__main__":
    cli()
