"""What the process pool runs: whole batches, as plain picklable data in and out."""

from __future__ import annotations

from collections.abc import Sequence

from enricher.analytics.chain import ChainMetrics, analyse_chain_batch, pack_chains
from enricher.analytics.expiry import ChainModel, ChainSnapshot
from enricher.analytics.model import ModelConfig, for_pool, model_chains
from enricher.records import Chain

ChainResults = tuple[list[ChainMetrics], list[tuple[ChainModel, ChainSnapshot]]]


def chain_job(chains: Sequence[Chain], previous: Sequence[ChainSnapshot | None], config: ModelConfig) -> ChainResults:
    """The contract's metrics and the model for a batch of chains (`chains` as `for_pool` made them)."""
    return analyse_chain_batch(pack_chains(chains)), model_chains(list(zip(chains, previous, strict=True)), config)


def shippable(chains: Sequence[Chain]) -> list[Chain]:
    """Chains cut down to what the job reads, so pickling costs less than the maths."""
    return [for_pool(chain) for chain in chains]
