"""The log's read routes: GET /v1/log/sth, /v1/log/consistency, /v1/log/inclusion.

Thin, like the other routes: read the signed LOG_QUERY from its header, ask the per-key limiter,
call center.pipeline.log_queries (which verifies the query and answers). A query is charged to
its key once its signature verified, like every other signed request (center.api.ratelimit).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from center.api.ratelimit import SIGNED_PER_KEY, Limits
from center.api.schemas import EnvelopeIn
from center.errors import ApiError
from center.ops import observability
from center.pipeline import log_queries
from center.pipeline.service import Center
from paywire import log_api

# The per-key limit log reads share with the other signed reads (balance, notices).
LOG_LIMITS = (SIGNED_PER_KEY,)
QUERY_HEADER_DOC = (
    "base64url of a signed log_query envelope's JSON naming this path and query "
    "(lifetime at most 300 s; never audited, no counter used)"
)
QueryHeader = Annotated[str | None, Header(alias=log_api.QUERY_HEADER, description=QUERY_HEADER_DOC)]
TreeSize = Annotated[int, Query(ge=0, le=log_queries.MAX_TREE_SIZE)]


class TreeHeadOut(BaseModel):
    """The newest signed tree head (paywire.tree_head), as an envelope's JSON."""

    tree_head: EnvelopeIn


class ConsistencyOut(BaseModel):
    """Proof (base64url hashes, RFC 9162) that the tree of `from` entries is a prefix of that of `to`."""

    model_config = ConfigDict(populate_by_name=True)
    from_size: int = Field(alias="from")
    to: int
    proof: list[str]


class InclusionOut(BaseModel):
    """Proof that entry `index` (audit seq - 1) is in the tree of `size` entries, and that size's head."""

    index: int
    size: int
    proof: list[str]
    tree_head: EnvelopeIn


def install_log_routes(app: FastAPI, center: Center, limits: Limits) -> None:
    def answer(header: str | None, path: str, params: dict[str, int], read) -> dict:
        envelope = log_queries.read_query_header(header)
        observability.note_signed(envelope.kid, center.clock_ms())
        limits.check_key(envelope.kid, LOG_LIMITS)
        try:
            log_queries.check_log_query(center, envelope, path, params)
            response = read()
        except ApiError as error:
            limits.charge_answered(envelope.kid, LOG_LIMITS, error.code)
            raise
        limits.charge_answered(envelope.kid, LOG_LIMITS)
        return response

    @app.get(
        log_api.STH_PATH,
        response_model=TreeHeadOut,
        summary="The newest signed tree head of the center's log",
    )
    def log_sth(tokenpay_query: QueryHeader = None) -> dict:
        return answer(tokenpay_query, log_api.STH_PATH, {}, lambda: log_queries.latest_tree_head(center))

    @app.get(
        log_api.CONSISTENCY_PATH,
        response_model=ConsistencyOut,
        summary="Proof that an older tree is a prefix of a newer one",
    )
    def log_consistency(
        from_size: Annotated[int, Query(alias="from", ge=0, le=log_queries.MAX_TREE_SIZE)],
        to: TreeSize,
        tokenpay_query: QueryHeader = None,
    ) -> dict:
        params = {"from": from_size, "to": to}
        return answer(
            tokenpay_query,
            log_api.CONSISTENCY_PATH,
            params,
            lambda: log_queries.consistency(center, from_size, to),
        )

    @app.get(
        log_api.INCLUSION_PATH,
        response_model=InclusionOut,
        summary="Proof that an entry is in the tree of a signed head",
    )
    def log_inclusion(index: TreeSize, size: TreeSize, tokenpay_query: QueryHeader = None) -> dict:
        return answer(
            tokenpay_query,
            log_api.INCLUSION_PATH,
            {"index": index, "size": size},
            lambda: log_queries.inclusion(center, index, size),
        )
