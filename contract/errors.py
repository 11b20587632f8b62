"""The one error type of a request the service cannot answer: why (a metrics label), what to do, the HTTP status.

Raised by the contract's preprocessing (an image that cannot be read or is over a limit), by the Open Inference
Protocol's parser, and by the service's request core (no model loaded, over the latency budget, an unknown class);
`serving.errors` turns any of them into the answer of whichever protocol the request came by.
"""
from __future__ import annotations


class RequestError(ValueError):
    """`reason` labels the metric (imgcls_invalid_requests_total); `status` is the HTTP status to answer."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason, self.status = reason, status
