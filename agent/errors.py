"""Errors that the CLI turns into exit codes, and pydantic error → field path formatting."""
from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
EXIT_NOT_RUNNING = 3
EXIT_NOT_PERMITTED = 4


@dataclass(frozen=True)
class FieldError:
    field: str   # e.g. "outbound[3].address"; "" for the document as a whole
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class CordonError(Exception):
    exit_code = EXIT_FAILURE


class InvalidInput(CordonError):
    """Input rejected; nothing stored or enforced was changed."""

    exit_code = EXIT_INVALID

    def __init__(self, errors: list[FieldError] | FieldError, what: str = "input") -> None:
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        self.what = what
        super().__init__(f"invalid {what}: " + "; ".join(map(str, self.errors)))

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class NotPermitted(CordonError):
    exit_code = EXIT_NOT_PERMITTED


class AgentNotRunning(CordonError):
    exit_code = EXIT_NOT_RUNNING


class ApplyFailed(CordonError):
    """The firewall refused the change. The desired state is stored; the agent keeps retrying."""

    exit_code = EXIT_FAILURE


def field_path(loc: tuple) -> str:
    """('outbound', 3, 'address') → 'outbound[3].address'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out += f".{part}" if out else str(part)
    return out


_PLAIN = {
    "extra_forbidden": "unknown key (a typo must not silently change isolation)",
    "missing": "required",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be an object",
    "dict_type": "must be an object",
}


def from_pydantic(exc, prefix: tuple = ()) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
        msg = err["msg"]
        for noise in ("Value error, ", "Assertion failed, "):
            if msg.startswith(noise):
                msg = msg[len(noise):]
        msg = _PLAIN.get(err["type"], msg)
        ctx = err.get("ctx") or {}
        if err["type"] in ("greater_than_equal", "less_than_equal"):
            msg = f"must be at least {ctx['ge']}" if "ge" in ctx else f"must be at most {ctx['le']}"
        elif err["type"] in ("too_short", "too_long"):
            msg = f"must hold at least {ctx.get('min_length')} item(s)" if err["type"] == "too_short" else f"must hold at most {ctx.get('max_length')} item(s)"
        errors.append(FieldError(field_path(prefix + loc), msg))
    return errors


def run_cli(prog: str, command, failures: tuple = ()) -> int:
    """Run one CLI command (`command()` -> exit code) and turn what it raises into the
    §2 exit codes, with one message on stderr: InvalidInput lists its fields; each
    `(exception types, exit code)` of `failures` prints `prog: reason` (code None: the
    exception's own `exit_code`). Shared by `cordon` and `cordon-console`."""
    import sys
    try:
        return command()
    except InvalidInput as exc:
        print(f"{prog}: invalid {exc.what}:", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        for types, code in failures:
            if isinstance(exc, types):
                if isinstance(exc, OSError) and exc.strerror:   # e.g. the control socket or state dir
                    reason = f"{exc.strerror}: {exc.filename or ''}"
                else:
                    reason = str(exc)
                print(f"{prog}: {reason}", file=sys.stderr)
                return exc.exit_code if code is None else code
        raise
