"""A conversation's messages: the history a chat request carries, which the input guard checks turn by turn and
the prompt renders between its system message and the question."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

HistoryRole = Literal["user", "assistant"]


class ChatMessage(BaseModel):
    """One earlier turn of a conversation. Only users and assistants speak in a history: the system message is
    the prompt's own (a client's "system" turn would be an instruction the prompt never wrote)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: HistoryRole
    content: str

    def as_dict(self) -> dict[str, str]:
        """The message as a chat-completions API takes it."""
        return {"role": self.role, "content": self.content}
