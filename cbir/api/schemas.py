"""Request and response bodies of the API. Every list of names and every bound comes from
the engine (metrics, fusion methods, roles, re-ranking), so the API cannot drift from it."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from ..distances import METRIC_ALIASES, METRICS
from ..fusion import FUSION_METHODS, NORMALISATIONS
from ..index import CHOICES
from ..rerank import ALPHA_RANGE, DEFAULT_ALPHA, DEFAULT_N, MAX_FEEDBACK_ROUNDS, N_RANGE, RERANK_METHODS, FeedbackRound
from ..auth.records import ROLES
from ..request import MAX_DEPTH, MAX_MODELS, MAX_TOP_K

#: What the ``centre`` field of a search, an evaluation, a sweep or an explanation means.
CENTRE_HELP = ("cosine and Euclidean on vectors centred on the collection's mean (the default); "
               "false: on the stored vectors as they are (chi-square and Bhattacharyya are never centred)")

Method = Literal[FUSION_METHODS]


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
    method: Literal[RERANK_METHODS] = "none"
    n: int = Field(DEFAULT_N, ge=N_RANGE[0], le=N_RANGE[1], description="neighbours used for the expansion")
    alpha: float = Field(DEFAULT_ALPHA, ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1], description="similarity exponent of the weights")


class SearchBody(BaseModel):
    """Query by collection id in JSON; to query by an image send multipart/form-data with
    the same fields (``models`` comma-separated, ``weights`` as JSON) and a file ``image``."""

    model_config = ConfigDict(extra="forbid")
    image_id: str | None = Field(None, max_length=512, description="id of a collection image")
    models: list[str] | None = Field(None, min_length=1, max_length=MAX_MODELS, description="default: the default model")
    metric: str = Field("cosine", max_length=32, description=f"one of {', '.join(METRICS)} (aliases: {', '.join(METRIC_ALIASES)})")
    # bounds checked once, by the engine's parser (cbir.request); here they are documented
    # a JSON number (true, 2.5 refused) or a form field's text; the parser checks the value
    top_k: StrictInt | str = Field(10, json_schema_extra={"minimum": 1, "maximum": MAX_TOP_K})
    exclude_query: bool = True
    rerank: RerankParams | None = Field(None, description="re-ranking (cosine only)")
    feedback: list[FeedbackRound] | None = Field(None, max_length=MAX_FEEDBACK_ROUNDS, description="Rocchio relevance-feedback rounds (cosine only)")
    backend: str | None = Field(None, max_length=16, description=f"vector index: {', '.join(CHOICES)}, any case (default: the server's "
                                             "CBIR_INDEX_BACKEND; auto = exact up to CBIR_EXACT_MAX vectors, FAISS above)")
    depth: StrictInt | str | None = Field(None, json_schema_extra={"minimum": 1, "maximum": MAX_DEPTH}, description="candidates per model from an approximate index (default max(top_k, CBIR_SEARCH_DEPTH)); AP is AP@depth")
    centre: bool = Field(True, description=CENTRE_HELP)

    @field_validator("models")
    @classmethod
    def _strip(cls, v):
        return None if v is None else [m.strip() for m in v]


class CombinedSearchBody(SearchBody):
    method: Method = "average"
    weights: dict[str, float] | None = Field(None, max_length=MAX_MODELS, description=(
        "per-model weights for method=weighted or rrf (0, or 1e-6 to 1e6: only their ratios count)"))
    normalisation: Literal[tuple(NORMALISATIONS)] = Field(
        "minmax", description="score normalisation before average or weighted fusion: "
        + "; ".join(f"{n.name}: {n.description}" for n in NORMALISATIONS.values()))


class UpdateUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal[ROLES] | None = Field(None, description="the new role")
    disabled: bool | None = Field(None, description="true: refused at login, every session and token ends; false: enabled again")


class AddUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=2, max_length=32)
    password: str = Field(min_length=1, max_length=256, description="10+ characters, not the username, not a common password")
    role: Literal[ROLES] = "student"
    name: str = Field("", max_length=100)
    email: str = Field("", max_length=200)
