"""What a batch's evals worker and the gateway exchange for one input line (the admin route
`POST /admin/tenants/{t}/batches/{id}/lines`): the line, and the answer a client would have had."""

from __future__ import annotations

import msgspec


class BatchLine(msgspec.Struct, frozen=True):
    """One input line (1-based `line`); `body` is the request's JSON text, as in the file."""

    line: int
    custom_id: str
    body: str


class LineReply(msgspec.Struct, frozen=True):
    """The gateway's answer to a line: its HTTP status, request id and JSON body (an answer,
    or an error in OpenAI's shape)."""

    status_code: int
    request_id: str
    body: str
