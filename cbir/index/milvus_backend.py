"""The Milvus backend (``pymilvus`` ``MilvusClient``): a Milvus server, standalone or
cluster, at ``CBIR_MILVUS_URI`` (optional ``CBIR_MILVUS_TOKEN``).

One Milvus collection per (image collection, model, weights, metric space), holding the
image id (primary key), its label, the content signature of the image, and the vector
(transformed as in :mod:`cbir.index.base`), with an HNSW index. Opening it brings it in
line with the feature store: rows whose signature changed are upserted, rows no longer
in the store are deleted, so re-indexing a collection only sends what changed. Searches
use bounded consistency after a strong read at sync (what was just written is seen) and may
filter by label.
"""

from __future__ import annotations

import re

import numpy as np

from .base import IndexBackendError, VectorIndex, space_for

ENGINE_METRIC = {"ip": "IP", "l2": "L2"}
HNSW_PARAMS = {"M": 32, "efConstruction": 200}
BATCH = 2000


def _client(uri: str, token: str | None):
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - a dependency
        raise IndexBackendError("the milvus backend needs `pip install pymilvus`") from exc
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=10)
    except Exception as exc:
        raise IndexBackendError(f"Milvus at {uri} is unreachable ({type(exc).__name__}): start it or set CBIR_MILVUS_URI") from None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def collection_name(collection: str, model: str, weights: str, space: str) -> str:
    """Milvus names allow letters, digits and underscores, starting with a letter or _."""
    raw = f"cbir_{collection}_{model}_{weights}_{space}"
    return re.sub(r"[^0-9A-Za-z_]", "_", raw)[:255]


class MilvusIndex(VectorIndex):
    backend = "milvus"

    def __init__(self, store, labels: list[str | None], metric: str, uri: str, token: str | None = None,
                 collection: str = "collection"):
        self.space = space_for(metric, "milvus")
        self.metric, self.uri = metric, uri
        self.client = _client(uri, token)
        self.name = collection_name(collection, store.model, f"{store.weights}_{store.variant}" if store.variant else store.weights, metric)
        self._rows = {str(i): r for r, i in enumerate(store.ids.tolist())}
        self._labels = labels
        try:
            self._sync(store)
        except Exception as exc:
            raise IndexBackendError(f"Milvus at {uri} failed ({type(exc).__name__}: {exc})") from None

    def _create(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, description="CBIR workbench feature store")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("label", DataType.VARCHAR, max_length=256)
        schema.add_field("sig", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type=ENGINE_METRIC[self.space.kind], params=HNSW_PARAMS)
        self.client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong")

    def _stored_signatures(self) -> dict[str, str]:
        out: dict[str, str] = {}
        it = self.client.query_iterator(self.name, batch_size=BATCH, filter='id != ""', output_fields=["id", "sig"])
        while batch := it.next():
            out.update((r["id"], r["sig"]) for r in batch)
        it.close()
        return out

    def _sync(self, store) -> None:
        """Upsert what is new or changed in the store, delete what left it."""
        if not self.client.has_collection(self.name):
            self._create(store.dim)
        stored = self._stored_signatures()
        ids, sigs = store.ids.tolist(), store.signatures.tolist()
        changed = [r for r, (i, s) in enumerate(zip(ids, sigs)) if stored.get(i) != s]
        gone = sorted(set(stored) - set(ids))
        if gone:
            self.client.delete(self.name, ids=gone)
        vectors = self.space.transform(store.embeddings[changed]) if changed else None
        for start in range(0, len(changed), BATCH):
            rows = changed[start : start + BATCH]
            self.client.upsert(self.name, [
                {"id": ids[r], "label": self._labels[r] or "", "sig": sigs[r], "vector": vectors[start + j].tolist()}
                for j, r in enumerate(rows)
            ])
        if changed or gone:
            self.client.flush(self.name)  # seal the segments so the HNSW index covers them
        self.client.load_collection(self.name)
        len(self)  # a strong read: everything written above is visible from here on
        self.synced = {"upserted": len(changed), "deleted": len(gone)}

    def search(self, queries, k, rows=None):
        q = self.space.transform(np.atleast_2d(queries))
        expr = ""
        if rows is not None:  # a label filter arrives as the rows of that label
            labels = sorted({self._labels[r] or "" for r in np.asarray(rows, dtype=int)})
            expr = " or ".join(f'label == "{_quoted(lab)}"' for lab in labels)
        # Bounded consistency: a strong search waits for the next time tick (~200 ms); the
        # sync above already made the store's rows visible.
        hits = self.client.search(self.name, data=q.tolist(), limit=k, filter=expr, consistency_level="Bounded",
                                  search_params={"metric_type": ENGINE_METRIC[self.space.kind], "params": {"ef": max(64, k)}})
        found = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), np.nan)
        for qi, row in enumerate(hits):
            for j, h in enumerate(row[:k]):
                found[qi, j] = self._rows.get(str(h["id"]), -1)
                scores[qi, j] = h["distance"]
        dist = self.space.to_distance(np.nan_to_num(scores, nan=0.0))
        dist[found < 0] = np.inf
        return found, dist

    def add(self, vectors):
        raise IndexBackendError("the Milvus collection follows the feature store: re-index, then open it again")

    remove = add

    def __len__(self):
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def drop(self) -> None:
        self.client.drop_collection(self.name)

    def describe(self):
        return {**super().describe(), "uri": self.uri, "collection": self.name}
