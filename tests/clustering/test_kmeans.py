import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from slimkit.techniques.clustering.kmeans import INITS, kmeans_1d, kmeans_1d_per_channel, sse


def randn(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def brute_force_labels(values, centroids) -> np.ndarray:
    """Nearest centroid by exhaustive float64 distance; argmin breaks ties to the lower index."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    c = np.asarray(centroids, dtype=np.float64).reshape(1, -1)
    return np.abs(v - c).argmin(axis=1)


@pytest.mark.parametrize("init", INITS)
def test_recovers_means_of_well_separated_clusters(init):
    rng = np.random.default_rng(1)
    means = np.array([-5.0, 0.0, 4.0])
    values = np.concatenate([rng.normal(m, 0.1, 3000) for m in means]).astype(np.float32)
    centroids, labels = kmeans_1d(torch.from_numpy(values), 3, init=init)
    # Sample means sit within ~0.1/sqrt(3000) = 2e-3 of the true means.
    np.testing.assert_allclose(centroids.numpy(), means, atol=1e-2)
    assert np.bincount(labels.numpy(), minlength=3).tolist() == [3000, 3000, 3000]


@pytest.mark.parametrize("k", [4, 16])
def test_inertia_matches_or_beats_sklearn(k):
    values = randn(20_000)
    ref = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=0)
    ref.fit(values.reshape(-1, 1).astype(np.float64))
    # Same iteration budget as sklearn's default (max_iter=300): 1-D Lloyd converges slowly.
    centroids, labels = kmeans_1d(values, k, max_iter=300)
    ours = sse(values, centroids, labels)
    assert ours <= ref.inertia_ * 1.01  # within 1% of sklearn, or better
    # With the default budget (100 iterations) we stay within 1% as well.
    centroids, labels = kmeans_1d(values, k)
    assert sse(values, centroids, labels) <= ref.inertia_ * 1.01


@pytest.mark.parametrize("k, optimum", [(4, 0.1175), (8, 0.03454)])
def test_large_input_reaches_lloyd_max_distortion(k, optimum):
    # 200k values exceed the k-means++ reduction threshold (32768), so this covers the chunked
    # seeding. Optimal MSE of a k-level quantizer of N(0, 1): Max (1960), Table 1.
    values = randn(200_000, seed=2)
    centroids, labels = kmeans_1d(values, k)
    mse = sse(values, centroids, labels) / values.size / values.var(dtype=np.float64)
    assert mse == pytest.approx(optimum, rel=1e-2)


@pytest.mark.parametrize("init", INITS)
def test_same_seed_gives_identical_result(init):
    values = torch.from_numpy(randn(50_000, seed=3))
    c1, l1 = kmeans_1d(values, 16, init=init, seed=7)
    c2, l2 = kmeans_1d(values, 16, init=init, seed=7)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)


@pytest.mark.parametrize("init", INITS)
def test_every_init_gives_a_valid_and_good_clustering(init):
    values = torch.from_numpy(randn(20_000, seed=4)).reshape(100, 200)
    centroids, labels = kmeans_1d(values, 16, init=init)
    assert centroids.shape == (16,) and centroids.dtype == torch.float32
    assert labels.shape == (100, 200) and labels.dtype == torch.int64
    assert bool((centroids[1:] > centroids[:-1]).all())  # sorted, distinct
    assert int(labels.min()) >= 0 and int(labels.max()) <= 15
    assert np.bincount(labels.flatten().numpy(), minlength=16).min() > 0  # no empty cluster
    best, best_labels = kmeans_1d(values, 16, max_iter=2000)
    # Inits end in different local optima; all are within 3% of a long kmeans++ run.
    assert sse(values, centroids, labels) <= 1.03 * sse(values, best, best_labels)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize(
    "name, values",
    [
        ("randn", randn(3000, seed=5)),
        ("integers with ties", np.random.default_rng(6).integers(-30, 30, 3000).astype(np.float32)),
        ("float64", np.random.default_rng(7).standard_normal(3000)),
        ("outlier", np.append(randn(2999, seed=8), np.float32(1e6))),
        ("90% zeros", np.where(np.random.default_rng(9).random(3000) < 0.9, 0, randn(3000))),
    ],
)
def test_each_value_gets_its_nearest_centroid_exactly(name, values, init):
    centroids, labels = kmeans_1d(values, 12, init=init, fixed=(0.0,))
    assert np.array_equal(labels.numpy(), brute_force_labels(values, centroids))


@pytest.mark.parametrize("k", [3, 9])  # 2 midpoints: binary search; 8: labelling grid
def test_ties_at_midpoints_go_to_the_lower_centroid_like_argmin(k):
    # Linear init on 0..2(k-1) puts centroids on the even numbers: odd values are exact ties.
    values = torch.arange(2 * k - 1, dtype=torch.float32)
    centroids, labels = kmeans_1d(values, k, init="linear", max_iter=0)
    assert centroids.tolist() == list(range(0, 2 * k - 1, 2))
    assert labels.tolist() == [i // 2 for i in range(2 * k - 1)]
    assert np.array_equal(labels.numpy(), brute_force_labels(values, centroids))


def test_adjacent_float32_values_each_keep_their_own_centroid():
    # Midpoints of neighbouring float32 values are not float32 numbers; rounding them to nearest
    # would hand every other value to its left neighbour.
    grid = np.float32(1.0) + np.arange(16, dtype=np.float32) * np.finfo(np.float32).eps
    values = np.repeat(grid, 3)
    centroids, labels = kmeans_1d(values, 16)
    assert np.array_equal(centroids.numpy(), grid)
    assert np.array_equal(labels.numpy(), np.repeat(np.arange(16), 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_labelling_grid_matches_binary_search_on_adversarial_values(dtype):
    # Internal fast path of the final labelling pass; values sit on midpoints, on grid cell
    # edges and one ulp either side of both, where rounding errors would show.
    from slimkit.techniques.clustering.kmeans import _LABEL_CELLS, _label_values

    for seed in range(40):
        rng = np.random.default_rng(seed)
        mids = rng.standard_normal(int(rng.integers(5, 300))) * rng.choice([1e-3, 1.0, 1e3])
        mids = np.sort(mids).astype(dtype)
        lo, hi = float(mids[0]), float(mids[-1])
        edges = lo + np.arange(-2, _LABEL_CELLS + 3) * ((hi - lo) / _LABEL_CELLS)
        v = np.concatenate([mids, edges.astype(dtype), rng.uniform(lo - 1, hi + 1, 1000)])
        v = v.astype(dtype)
        v = np.concatenate([v, np.nextafter(v, dtype(np.inf)), np.nextafter(v, dtype(-np.inf))])
        assert np.array_equal(_label_values(v, mids), np.searchsorted(mids, v, side="left"))


@pytest.mark.parametrize("init", INITS)
def test_fixed_zero_stays_a_centroid_and_keeps_every_zero(init):
    rng = np.random.default_rng(10)
    values = randn(40_000, seed=11)
    values[rng.random(values.size) < 0.7] = 0.0  # 70% sparse, like a pruned layer
    centroids, labels = kmeans_1d(values, 16, init=init, fixed=(0.0,))
    zero = np.flatnonzero(centroids.numpy() == 0.0)
    assert zero.size == 1
    assert bool((labels.numpy()[values == 0.0] == zero[0]).all())
    assert np.bincount(labels.numpy(), minlength=16).min() > 0


def test_fixed_centroids_absent_from_the_data_stay_put():
    values = randn(10_000, seed=12)  # randn has no exact 0.0 or 0.25
    centroids, labels = kmeans_1d(values, 8, fixed=(0.0, 0.25))
    assert {0.0, 0.25} <= set(centroids.tolist())
    assert np.array_equal(labels.numpy(), brute_force_labels(values, centroids))


def test_empty_clusters_are_reseeded():
    # Two tight modes far apart: linear init leaves the 4 middle centroids empty at first.
    rng = np.random.default_rng(13)
    values = np.concatenate([rng.normal(-10, 1, 5000), rng.normal(10, 1, 5000)])
    centroids, labels = kmeans_1d(values.astype(np.float32), 6, init="linear")
    assert np.bincount(labels.numpy(), minlength=6).min() > 0
    assert ((centroids < -5).sum().item(), (centroids > 5).sum().item()) == (3, 3)


def test_dtypes_and_array_types_agree():
    base = torch.from_numpy(randn(5000, seed=14))
    ref_c, ref_l = kmeans_1d(base, 8)
    c, lab = kmeans_1d(base.numpy(), 8)
    assert torch.equal(c, ref_c) and torch.equal(lab, ref_l)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        c, lab = kmeans_1d(base.to(dtype), 8)
        assert c.dtype == torch.float32 and lab.shape == base.shape
        assert np.array_equal(lab.numpy(), brute_force_labels(base.to(dtype).double(), c))


def test_sse_is_the_inertia():
    values = randn(1000, seed=15)
    centroids, labels = kmeans_1d(values, 4)
    expected = ((values.astype(np.float64) - centroids.double().numpy()[labels.numpy()]) ** 2).sum()
    assert sse(values, centroids, labels) == pytest.approx(expected, rel=1e-12)
    assert sse(values, centroids.numpy(), labels.numpy()) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_per_channel_gives_each_slice_its_own_codebook(dim):
    w = torch.from_numpy(randn(32 * 6 * 40, seed=16)).reshape(32, 6, 40)
    w[w.abs() < 0.3] = 0.0
    centroids, labels = kmeans_1d_per_channel(w, 8, dim=dim, fixed=(0.0,))
    channels = w.shape[dim]
    assert centroids.shape == (channels, 8) and labels.shape == w.shape
    rows = w.movedim(dim, 0).reshape(channels, -1)
    row_labels = labels.movedim(dim, 0).reshape(channels, -1)
    recon = centroids.gather(1, row_labels)
    for r in range(channels):
        assert len(torch.unique(recon[r])) <= 8
        assert np.array_equal(row_labels[r].numpy(), brute_force_labels(rows[r], centroids[r]))
        assert bool((recon[r][rows[r] == 0] == 0).all())  # zeros stay exactly zero


def test_per_channel_matches_single_run_quality():
    w = torch.from_numpy(randn(4 * 5000, seed=17)).reshape(4, 5000)
    centroids, labels = kmeans_1d_per_channel(w, 16)
    for r in range(4):
        c, lab = kmeans_1d(w[r], 16)
        # Independent random draws per route, so results differ; quality must not.
        assert sse(w[r], centroids[r], labels[r]) <= 1.03 * sse(w[r], c, lab)


@pytest.mark.parametrize(
    "values, kwargs, match",
    [
        (randn(100), {"k": 1}, r"^k must be an int >= 2"),
        (randn(100), {"k": 2.0}, r"^k must be an int >= 2"),
        (np.array([1.0, 1.0, 2.0], np.float32), {"k": 3}, r"^k must be at most the number of "
         r"distinct values in values, got k=3 but only 2"),
        (np.array([], np.float32), {"k": 2}, r"^values must not be empty"),
        (np.array([0.0, np.nan, 1.0, 2.0]), {"k": 2}, r"^values must be finite"),
        (np.array([0.0, -np.inf, 1.0, 2.0]), {"k": 2}, r"^values must be finite"),
        (np.array([1 + 2j, 3j]), {"k": 2}, r"^values must hold real numbers"),
        (randn(100), {"k": 4, "init": "kmeans"}, r"^init must be one of 'kmeans\+\+', 'linear'"),
        (randn(100), {"k": 2, "fixed": (0.0, 1.0, 2.0)}, r"^fixed holds 3 centroids but k=2"),
        (randn(100), {"k": 4, "fixed": (0.0, 0.0)}, r"^fixed must hold distinct values"),
        (randn(100), {"k": 4, "fixed": (float("nan"),)}, r"^fixed must be a sequence of finite"),
        (randn(100), {"k": 4, "fixed": 0.0}, r"^fixed must be a sequence of finite"),
        (randn(100), {"k": 4, "seed": -1}, r"^seed must be an int >= 0"),
        (randn(100), {"k": 4, "max_iter": -1}, r"^max_iter must be an int >= 0"),
        (randn(100), {"k": 4, "tol": -1e-3}, r"^tol must be a finite number >= 0"),
    ],
)
def test_bad_input_names_the_argument(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans_1d(values, **kwargs)


def test_bad_per_channel_input_names_the_argument():
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^dim must be an int in \[-2, 1\]"):
        kmeans_1d_per_channel(w, 4, dim=2)
    w[2] = 1.0
    with pytest.raises(ValueError, match=r"distinct values in weight .*\(channel 2\)"):
        kmeans_1d_per_channel(w, 4)
    with pytest.raises(ValueError, match=r"^weight must have at least 1 dimension"):
        kmeans_1d_per_channel(torch.tensor(1.0), 2)


def test_bad_sse_input_names_the_argument():
    values = randn(10)
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 1\]"):
        sse(values, np.array([0.0, 1.0]), np.full(10, 2))
    with pytest.raises(ValueError, match=r"^labels must have one entry per value"):
        sse(values, np.array([0.0, 1.0]), np.zeros(9, dtype=np.int64))
    with pytest.raises(ValueError, match=r"^centroids must be a non-empty 1-D array"):
        sse(values, np.zeros((2, 2)), np.zeros(10, dtype=np.int64))
