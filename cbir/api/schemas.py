from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Metric = Literal["euclidean", "cosine", "chi_square", "bhattacharyya"]
Method = Literal["average", "weighted", "rrf"]


class ErrorBody(BaseModel):
    error: str


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    username: str
    role: str


class RerankParams(BaseModel):
    """Re-ranking before fusion (cosine only): alpha query expansion, or database-side
    augmentation plus alpha query expansion."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["none", "aqe", "dba_aqe"] = "none"
    n: int = Field(10, ge=1, le=100, description="neighbours used for the expansion")
    alpha: float = Field(3.0, ge=0, le=20, description="similarity exponent of the weights")


class FeedbackRound(BaseModel):
    """One Rocchio round: ids marked relevant and not relevant (applied in order)."""

    model_config = ConfigDict(extra="forbid")
    relevant: list[str] = Field(default_factory=list, max_length=1000)
    non_relevant: list[str] = Field(default_factory=list, max_length=1000)


class SearchRequest(BaseModel):
    """Query by collection id in JSON; to query by an image send multipart/form-data with
    the same fields (``models`` comma-separated, ``weights`` as JSON) and a file ``image``."""

    model_config = ConfigDict(extra="forbid")
    image_id: str | None = Field(None, max_length=512, description="id of a collection image")
    models: list[str] | None = Field(None, min_length=1, max_length=8, description="default: the default model")
    metric: Metric = "cosine"
    top_k: int = Field(10, ge=1, le=1000)
    exclude_query: bool = True
    rerank: RerankParams | None = Field(None, description="re-ranking (cosine only)")
    feedback: list[FeedbackRound] | None = Field(None, max_length=20, description="Rocchio relevance-feedback rounds (cosine only)")

    @field_validator("models")
    @classmethod
    def _strip(cls, v):
        return None if v is None else [m.strip() for m in v]


class CombinedSearchRequest(SearchRequest):
    method: Method = "average"
    weights: dict[str, float] | None = Field(None, description="per-model weights for method=weighted (non-negative)")


class AddUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=2, max_length=32)
    password: str = Field(min_length=1, max_length=256, description="10+ characters, not the username, not a common password")
    role: Literal["admin", "researcher", "student", "demo"] = "student"
    name: str = Field("", max_length=100)
    email: str = Field("", max_length=200)
