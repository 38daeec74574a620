"""
nanoGPT-style configuration: a script keeps its defaults as plain module globals, then calls

    config = configure(dict(globals()))

(a copy of the globals, so that calling main() twice in one process starts from the same defaults), which
applies, in order, any config files given as positional arguments (plain Python files of assignments) and
any `--key=value` (or `--key value`) overrides. Overrides are type-checked against the defaults; unknown keys are
errors, so a typo never silently trains the wrong model.
"""
import ast
import os
import sys


def config_keys(g):
    """The names of g's settings: public globals holding a scalar (int, float, bool, str or None)."""
    return [k for k, v in g.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))]


def _parse_value(key, raw, default):
    if isinstance(default, str):
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if default is None:
            return raw  # a None default takes a bare string (e.g. a path)
        raise ValueError(f"--{key}={raw}: not a valid {type(default).__name__}") from None
    if default is None or isinstance(val, type(default)):
        return val
    if isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool):
        return float(val)
    raise ValueError(f"--{key}={raw}: expected {type(default).__name__}, got {type(val).__name__}")


def configure(g, argv=None):
    """Update the dict of globals g in place from argv (default sys.argv[1:]); return the resolved config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keys = config_keys(g)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            before = {k: g[k] for k in keys}
            with open(arg) as f:  # a config file knows its own path (__file__), e.g. to find files beside it
                exec(f.read(), {"__file__": os.path.abspath(arg)}, cfg := {})
            unknown = [k for k in cfg if not k.startswith("_") and k not in before and not callable(cfg[k])
                       and not isinstance(cfg[k], type(sys))]
            if unknown:
                raise ValueError(f"{arg}: unknown config key(s) {', '.join(unknown)}")
            g.update({k: v for k, v in cfg.items() if k in before})
            continue
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        else:  # `--key value`, or a bare `--flag` for a boolean
            key = arg[2:].replace("-", "_")
            if isinstance(g.get(key), bool) and (i >= len(argv) or argv[i].startswith("--")):
                raw = "True"
            elif i >= len(argv):
                raise ValueError(f"--{key} needs a value (--{key}=VALUE)")
            else:
                raw, i = argv[i], i + 1
        key = key.replace("-", "_")
        if key not in keys:
            raise ValueError(f"unknown config key --{key}; known: {', '.join(sorted(keys))}")
        g[key] = _parse_value(key, raw, g[key])
    return {k: g[k] for k in keys}


def require(path, setting, hint):
    """A setting that names a file or folder which is not there stops the script with one line saying what it
    is and which command makes it (a new user's first error should not be a traceback)."""
    if not path or not os.path.exists(path):
        raise SystemExit(f"{setting}={path or '(empty)'}: not found. {hint}")
    return path
