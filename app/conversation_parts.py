"""The parts that make a chat a conversation, built from settings: the query rewriter (a follow-up made
standalone for retrieval) and the store of server-side conversations."""

from __future__ import annotations

import logging
from datetime import timedelta

from app.settings import Settings
from prompts.loader import require_purpose
from prompts.registry import PromptRegistry
from serving.answering.conversations import ConversationLimits, ConversationStore, StateConversations
from serving.answering.rewrite import ModelRewriter, NoRewriter, QueryRewriter, RuleRewriter
from serving.contracts.generation import Generator
from serving.infra.state_store import StateStore

logger = logging.getLogger("ragops")


def build_rewriter(settings: Settings, generator: Generator) -> QueryRewriter:
    """The rewriter the ``rewriter`` setting names. The model rewriter needs a model: with the extractive
    generator it is the rules' (and the log says so)."""
    chosen = settings.answering.rewriter
    if chosen == "none":
        return NoRewriter()
    if chosen == "model":
        if generator.name == "extractive":
            logger.warning("rewriter=model needs a model generator; the extractive one has none: rules rewrite")
            return RuleRewriter()
        prompt = require_purpose(
            PromptRegistry(settings.prompts_dir).resolve(settings.answering.rewrite_prompt), "rewrite"
        )
        return ModelRewriter(generator, prompt, settings.answering.rewrite_budget_ms / 1000)
    return RuleRewriter()


def build_conversations(settings: Settings, state: StateStore) -> ConversationStore | None:
    """Where conversations are kept: the Redis the replicas share when ``redis_url`` is set (its keys expire by
    themselves), else the state store (the retention run prunes it); None with a retention of 0 days."""
    days = settings.retention.conversation_retention_days
    if not days:
        return None
    limits = ConversationLimits(settings.limits.conversation_max_turns, settings.limits.conversation_max_chars)
    if settings.redis_url:
        from serving.answering.conversations_redis import RedisConversations

        return RedisConversations(settings.redis_url, timedelta(days=days), limits)
    return StateConversations(state, timedelta(days=days), limits)
