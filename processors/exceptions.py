"""Errors of the cleansing and mapping stage.

Two outcomes of a field that fails its rule, told apart by type (never by message text), and one of a
field that passes with a remark (:class:`FieldFlagged`: the value is kept, with a quality flag):

- :class:`FieldInvalid` – raised by a transform; the mapper decides what it means. For an optional field
  it becomes null plus a quality flag ``<field>_<suffix>`` (``email_invalid``, ``country_unknown``); for a
  required field it becomes a :class:`RecordRejected` with the same rule.
- :class:`RecordRejected` – the whole record goes to the dead-letter topic with ``stage``, ``rule`` and
  ``field``. It is terminal: the same input always fails the same way.

Messages name the field and the rule, never the offending value (it may be personal data).
"""

from __future__ import annotations

from crmflow.exceptions import CrmflowError, TerminalError


class ProcessorError(CrmflowError):
    """Root of the errors raised by ``processors``."""


class FieldInvalid(ProcessorError):  # noqa: N818 - a signal, like StopIteration, not an "...Error"
    """A transform could not produce a clean value from its input.

    ``rule`` names the check that failed (``date_format``, ``email_format``...); ``suffix`` is the end of
    the quality flag the mapper adds for an optional field (``invalid`` gives ``email_invalid``).
    """

    def __init__(self, rule: str, message: str, *, suffix: str = "invalid") -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.suffix = suffix


class FieldFlagged(ProcessorError):  # noqa: N818 - a signal, like StopIteration, not an "...Error"
    """A transform produced a clean ``value`` but one the record's quality flags must mention.

    The mapper keeps ``value`` (the rest of the field's chain runs on it) and adds the flag
    ``<field>_<suffix>`` (``phone_vanity``: a vanity number converted to digits). Not an invalid value:
    the field's ``invalid:`` policy does not apply.
    """

    def __init__(self, value: object, suffix: str) -> None:
        super().__init__(f"value kept, flagged {suffix}")
        self.value = value
        self.suffix = suffix


class RecordRejected(ProcessorError, TerminalError):  # noqa: N818 - a control-flow signal carrying data
    """The record cannot be mapped and goes to the dead-letter topic.

    Carries what the dead-letter record needs: the ``stage`` that gave up, the ``rule`` (``required``,
    ``date_format``, ``currency_format``, ``schema``...), the target ``field`` concerned (or None) and a
    PII-free ``message``. ``entity`` and ``source_position`` are filled in when known.
    """

    def __init__(
        self,
        stage: str,
        rule: str,
        field: str | None,
        message: str,
        *,
        entity: str | None = None,
        source_position: str | None = None,
    ) -> None:
        where = f" ({entity} at {source_position})" if entity and source_position else ""
        super().__init__(f"{stage}: rule {rule} failed on field {field}{where}: {message}")
        self.stage = stage
        self.rule = rule
        self.field = field
        self.message = message
        self.entity = entity
        self.source_position = source_position


class MappingError(ProcessorError, TerminalError):
    """An entity mapping cannot be compiled (unknown transform, bad parameter, missing reference table).

    A configuration problem, found before any record is processed; ``crmflow config check`` reports the
    same problems with file and line.
    """
