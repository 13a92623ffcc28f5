"""``contrastkit fit --method M --data D``: one command for every method of every modality.

The method is looked up in the one registry (:data:`contrastkit.core.registry.METHODS`); when
several modalities share its name, the modality that recognises ``--data`` runs it, or the one
``--modality`` names. The modality's command-line module (:class:`contrastkit.modalities.Modality`)
supplies its options and runs the fit. What is the same everywhere:

- the common options (:data:`contrastkit.modalities.COMMON_OPTIONS`), spelled the same in every
  modality; one that a modality cannot honour is an error saying why;
- ``--config FILE.yaml``: its keys are options (``batch-size`` or ``batch_size``), the command
  line wins over them;
- an option that the chosen method does not use, or that no method has, is an error that lists the
  method's options (nothing is silently ignored);
- ``--resume --out RUN`` continues a run; the run's folder says which method it was;
- ``--logger csv|tensorboard|mlflow|wandb`` (repeatable): the experiment trackers, added here to
  every modality's options; the modality's command runs inside
  :func:`contrastkit.core.trackers.logging_to`, so every run it trains logs to them;
- ``--init PATH``: start the method's encoder from pretrained weights (an exported encoder, a run
  folder, a checkpoint or a state dict), added here to every modality's options likewise; the
  command runs inside :func:`contrastkit.core.init_source.starting_from` and the engine loads the
  weights before the first step (:mod:`contrastkit.engine.init_weights`). Not with ``--resume``.

``contrastkit text|pairs|graph|timeseries ...`` are the same command with the modality fixed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from contrastkit.core.errors import ConfigError, closest_names
from contrastkit.core.init_source import check_init_path, starting_from
from contrastkit.core.registry import METHODS, MethodEntry
from contrastkit.core.trackers import TRACKERS, check_trackers, logging_to
from contrastkit.modalities import COMMON_OPTIONS, Modality, get_modality, load_plugins, recognising

DEFAULT_METHOD = "simclr"  # `contrastkit fit` alone: SimCLR on scikit-learn's digits


class OptionParser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors; no abbreviations (`--epoch` is not `--epochs`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}. Run '{self.prog} --help' for the options.")


def _option_name(token: str) -> str:
    return token.split("=", 1)[0]


def _take(tokens: list[str], option: str) -> tuple[str | None, list[str]]:
    """(the value of ``option`` in ``tokens`` or None, the tokens without it)."""
    value, rest, i = None, [], 0
    while i < len(tokens):
        token = tokens[i]
        if token == option:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{option} needs a value.")
            value = tokens[i + 1]
            i += 2
            continue
        if token.startswith(option + "="):
            value = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    return value, rest


def saved_run(out: str) -> tuple[str | None, str | None]:
    """(method, modality) of the run in folder ``out``, from the files its modality wrote."""
    folder = Path(out)
    if (folder / "command.yaml").is_file():  # tabular
        return (yaml.safe_load((folder / "command.yaml").read_text()) or {}).get("method"), "tabular"
    config = folder / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"--resume: '{folder}' holds no config.yaml, so it is not a run folder of contrastkit "
                          f"(or its run stopped before writing one: start it again without --resume).")
    saved = yaml.safe_load(config.read_text()) or {}
    if saved.get("command") == "graph":
        return saved.get("options", {}).get("method"), "graph"
    if "ts2vec" in saved:
        return "ts2vec", "timeseries"
    if "max_length_second" in saved:
        return saved.get("objective"), "pairs"
    # An audio run names its modality; an image run is told by its FitConfig (simclr and byol are both's).
    return saved.get("method"), saved.get("modality", "image" if "image_size" in saved else None)


def resolve_method(method: str | None, modality: str | None, data: str | None, out: str | None,
                   resume: bool) -> tuple[Modality, MethodEntry | None]:
    load_plugins()
    if method is None and resume and out is not None and modality is None:
        method, modality = saved_run(out)
    if method is None:
        if modality is not None:
            return get_modality(modality), None  # the modality says what is missing
        method, modality = DEFAULT_METHOD, "image"  # SimCLR on digits; audio has a simclr too
    entry = METHODS.resolve(method, modality, recognising(data))
    return get_modality(entry.modality), entry


def read_config(path: str) -> dict[str, Any]:
    """The mapping of options in a ``--config`` YAML file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: '{file}' does not exist.")
    values = yaml.safe_load(file.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config: '{file}' must hold a mapping of options (key: value), not {type(values).__name__}.")
    return values


def yaml_tokens(file: str, values: dict[str, Any], parser: argparse.ArgumentParser,
                file_only: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Any]]:
    """The options of the ``--config`` file ``file`` (its mapping ``values``) as command-line tokens
    for ``parser``, and the values of ``file_only`` keys (settings a modality takes from files only,
    e.g. an image method's ``extra`` mapping)."""
    by_option = {o: a for a in parser._actions for o in a.option_strings if o.startswith("--")}
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, []).append(action)
    tokens: list[str] = []
    extras: dict[str, Any] = {}
    for key, value in values.items():
        if str(key).replace("-", "_") in file_only:
            extras[str(key).replace("-", "_")] = value
            continue
        option = "--" + str(key).replace("_", "-")
        if option == "--trust-checkpoint":  # running a file's code is asked for each time, not set once in a file
            raise ConfigError(f"--config '{file}': trust-checkpoint is an option of the command line only "
                              f"(it runs the code a checkpoint carries); give --trust-checkpoint there.")
        actions = [by_option[option]] if option in by_option else by_dest.get(str(key).replace("-", "_"), [])
        if not actions or option in ("--config", "--modality"):
            close = closest_names(option, by_option)
            hint = f" Did you mean: {', '.join(c.removeprefix('--') for c in close)}?" if close else ""
            raise ConfigError(f"Unknown option '{key}' in --config '{file}'.{hint}")
        if value is None:
            continue
        flags = [a for a in actions if a.nargs == 0]
        if flags:  # store_true / store_false pairs
            chosen = [a for a in flags if a.const == bool(value)]
            if chosen:
                tokens.append(chosen[0].option_strings[0])
            continue
        action = actions[0]
        name = action.option_strings[0]
        if isinstance(value, list) and isinstance(action, argparse._AppendAction):
            for item in value:
                tokens += [name, str(item)]
        elif isinstance(value, list):
            tokens += [name, *map(str, value)]
        else:
            tokens += [name, str(value)]
    return tokens, extras


def method_options(parser: argparse.ArgumentParser, entry: MethodEntry | None) -> list[str]:
    excluded = {f"--{o}" for o in (entry.excluded_options if entry else ())}
    return sorted({o for a in parser._actions for o in a.option_strings
                   if o.startswith("--") and o not in excluded and o != "--help"})


def check_options(tokens: list[str], parser: argparse.ArgumentParser, modality: Modality,
                  entry: MethodEntry | None) -> None:
    """Options the modality cannot honour, that the method does not use, or that nobody has: errors."""
    who = f"method '{entry.name}' ({modality.name})" if entry else f"{modality.name} runs"
    valid = method_options(parser, entry)
    listing = f"The options of {who}: {', '.join(valid)}."
    excluded = {f"--{o}" for o in (entry.excluded_options if entry else ())}
    known = {o for a in parser._actions for o in a.option_strings}
    for token in tokens:
        if not token.startswith("--"):
            continue
        name = _option_name(token)
        common = name.removeprefix("--")
        if common in modality.not_applicable:
            raise ConfigError(f"{name} does not apply to {modality.name} runs: {modality.not_applicable[common]}. {listing}")
        if name in excluded:
            raise ConfigError(f"{name} does not apply to {who}. {listing}")
        if name not in known:
            close = closest_names(name, valid)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown option '{name}' for {who}.{hint} {listing}")


def given_destinations(tokens: list[str], parser: argparse.ArgumentParser) -> set[str]:
    by_option = {o: a.dest for a in parser._actions for o in a.option_strings}
    return {by_option[_option_name(t)] for t in tokens if _option_name(t) in by_option}


LOGGER_HELP = (f"experiment tracker, repeatable: {', '.join(TRACKERS)}; metrics.csv is always written, the "
               f"others write into the run folder without a network (tensorboard/, mlruns/, wandb/)")
INIT_HELP = ("start the encoder from pretrained weights: an exported encoder (model.safetensors), a run folder, "
             "a checkpoint (.ckpt) or a torch state dict (.pt); the rest of the method starts as usual, at step 0")


class ParsedFit(NamedTuple):
    modality: Modality
    entry: MethodEntry | None
    args: argparse.Namespace  # the modality's options
    loggers: tuple[str, ...]  # --logger, checked (csv first)
    init: str | None = None  # --init, an existing path


def parse_fit(argv: list[str], modality: str | None = None, prog: str = "contrastkit fit") -> ParsedFit:
    """(modality, method entry or None, parsed options, trackers) for ``contrastkit fit`` + ``argv``."""
    config, tokens = _take(list(argv), "--config")
    chosen_modality, tokens = _take(tokens, "--modality")
    chosen_modality = chosen_modality or modality
    method, _ = _take(tokens, "--method")
    data, _ = _take(tokens, "--data")
    out, _ = _take(tokens, "--out")
    resume = "--resume" in tokens
    method_on_command_line = method is not None
    values = read_config(config) if config is not None else {}
    if config is not None:  # method / data / modality may come from the file
        method = method or values.get("method")
        data = data or values.get("data")
        out = out or values.get("out")
        chosen_modality = chosen_modality or values.get("modality")
    spec, entry = resolve_method(method, chosen_modality, data, out, resume)
    cli = spec.load_cli()
    parser = OptionParser(prog=prog + (f" --method {entry.name}" if entry and prog == "contrastkit fit" else ""),
                          description=f"{spec.name}: {entry.summary if entry else spec.summary}")
    cli.add_arguments(parser)
    parser.add_argument("--logger", action="append", metavar="TRACKER", help=LOGGER_HELP)
    parser.add_argument("--init", metavar="PATH", help=INIT_HELP)
    excluded = {f"--{o}" for o in (entry.excluded_options if entry else ())}
    for action in parser._actions:  # --help shows only the method's own options
        if excluded & set(action.option_strings):
            action.help = argparse.SUPPRESS
    if entry is not None and not method_on_command_line and not (resume and method is None):
        tokens = ["--method", entry.name, *tokens]
    extras: dict[str, Any] = {}
    if config is not None:
        from_file, extras = yaml_tokens(config, values, parser, getattr(cli, "CONFIG_FILE_KEYS", ()))
        tokens = from_file + tokens
    check_options(tokens, parser, spec, entry)
    args = parser.parse_args(tokens)
    loggers = check_trackers(vars(args).pop("logger"))  # the engine's, not the modality's
    init = check_init_path(vars(args).pop("init"))  # the engine's too
    if init is not None and resume:
        raise ConfigError("--init starts a new run from pretrained weights; --resume continues a run from its own "
                          "checkpoint (weights, optimiser and step). Give one of them.")
    if extras:
        args.config_file_values = extras
    args.given_options = given_destinations(tokens, parser)
    if not getattr(cli, "NEEDS_GIVEN_OPTIONS", False):
        del args.given_options
    return ParsedFit(spec, entry, args, loggers, init)


def fit_help() -> str:
    load_plugins()
    lines = ["usage: contrastkit fit --method METHOD --data DATA [--modality MODALITY] [options]", "",
             "Pretrain an encoder and write a run folder. 'contrastkit fit --method METHOD --help' lists the",
             "method's options. Options every modality spells the same: " +
             " ".join(f"--{o}" for o in COMMON_OPTIONS) + ".", "", "methods:"]
    for entry in METHODS.entries():
        lines.append(f"  {entry.name:<16}{entry.modality:<12}{entry.summary}")
    return "\n".join(lines)


def run_fit(argv: list[str], modality: str | None = None, prog: str = "contrastkit fit") -> int:
    if any(t in ("-h", "--help") for t in argv) and "--method" not in argv and modality is None:
        print(fit_help())
        return 0
    spec, _, args, loggers, init = parse_fit(argv, modality, prog)
    with logging_to(loggers), starting_from(init):
        return spec.load_cli().command(args)


def fit(method: str | None = None, data: str | None = None, **options: Any) -> dict[str, Any]:
    """Python mirror of ``contrastkit fit``: ``fit(method="simcse", data="s.txt", max_steps=100,
    out="runs/x")``. Options are the command's (``batch_size`` for ``--batch-size``; ``True`` for a
    flag; a list for a repeatable option). Returns the run: ``{"out": folder, "modality", "method",
    "summary": summary.json's content (or None)}``."""
    if options.get("out") is None and not options.get("resume"):
        import time

        options["out"] = str(Path("runs") / f"{method or DEFAULT_METHOD}-{time.strftime('%Y%m%d-%H%M%S')}")
    argv: list[str] = []
    for key, value in {"method": method, "data": data, **options}.items():
        if value is None or value is False:
            continue
        option = "--" + key.replace("_", "-")
        if value is True:
            argv.append(option)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [option, str(item)]
        else:
            argv += [option, str(value)]
    spec, entry, args, loggers, init = parse_fit(argv)
    with logging_to(loggers), starting_from(init):
        spec.load_cli().command(args)
    out = Path(options["out"])
    summary_file = out / "summary.json"

    return {"out": str(out), "modality": spec.name, "method": entry.name if entry else method,
            "summary": json.loads(summary_file.read_text()) if summary_file.is_file() else None}
