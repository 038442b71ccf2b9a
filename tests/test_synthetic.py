"""The synthetic funnel: requested rates, a consistent chain, one model for every draw size."""

import pandas as pd
import pytest

from transform.datasets.synthetic import FunnelConfig, generate


@pytest.fixture(scope="module")
def large():
    return generate(FunnelConfig(rows=300_000, seed=3, click_rate=0.1, conversion_rate=0.2))


def test_rates_match_the_request(large):
    # Binomial standard errors at n=300k: ~0.0005 for CTR, ~0.002 for CVR on ~30k clicks.
    assert large["click"].mean() == pytest.approx(0.1, abs=0.003)
    cvr = large["conversion"].sum() / large["click"].sum()
    assert cvr == pytest.approx(0.2, abs=0.01)


def test_chain_is_consistent(large):
    assert not ((large["conversion"] == 1) & (large["click"] == 0)).any()
    converted = large["conversion"] == 1
    assert (large.loc[converted, "revenue"] > 0).all()
    assert (large.loc[~converted, "revenue"] == 0).all()


def test_same_seed_same_rows_and_small_draws_work():
    a = generate(FunnelConfig(rows=500, seed=1))
    b = generate(FunnelConfig(rows=500, seed=1))
    assert a.equals(b)
    tiny = generate(FunnelConfig(rows=5, seed=1, sample_seed=99))
    assert len(tiny) == 5 and not tiny.equals(a.head(5))


def test_features_carry_signal(large):
    """Click rates differ across devices and fall with position, as the generator intends."""
    by_device = large.groupby("device")["click"].mean()
    assert by_device["mobile"] > by_device["tablet"] + 0.02
    top = large.loc[large["position"] <= 3, "click"].mean()
    bottom = large.loc[large["position"] >= 18, "click"].mean()
    assert top > bottom * 1.5


def test_true_expectations_agree_with_the_draws(large):
    """The truth the generator reports matches what it drew: overall means within a few
    standard errors, and binned by the true P(click) the observed rate follows it."""
    import numpy as np

    from transform.datasets.synthetic import true_expectations

    truth = true_expectations(large, FunnelConfig(seed=3, click_rate=0.1, conversion_rate=0.2))
    assert set(truth) == {"click", "conversion", "revenue"}
    assert truth["click"].mean() == pytest.approx(large["click"].mean(), abs=0.0017)
    assert truth["conversion"].mean() == pytest.approx(large["conversion"].mean(), abs=0.0008)
    # Revenue: std of the mean at n = 300k is about 0.1% of the total per row's spread.
    standard_error = large["revenue"].std() / np.sqrt(len(large))
    assert truth["revenue"].mean() == pytest.approx(large["revenue"].mean(), abs=4 * standard_error)
    assert np.all(truth["conversion"] <= truth["click"])
    bins = np.quantile(truth["click"], np.linspace(0, 1, 11))
    index = np.clip(np.searchsorted(bins, truth["click"]) - 1, 0, 9)
    for b in range(10):
        rows = index == b
        expected = truth["click"][rows].mean()
        observed = large["click"].to_numpy()[rows].mean()
        assert observed == pytest.approx(expected, abs=4 * np.sqrt(expected / rows.sum()) + 1e-3)
    # A different world gives different truths for the same rows.
    other = true_expectations(large, FunnelConfig(seed=4, click_rate=0.1, conversion_rate=0.2))
    assert np.abs(other["click"] - truth["click"]).mean() > 0.02


def test_large_tables_are_drawn_and_written_in_chunks(tmp_path, monkeypatch):
    """Above GENERATE_CHUNK_ROWS rows the table comes in seeded chunks; write_csv writes
    them one after another and reads back as generate's table. Up to that size the
    rows are the single-chunk draw of before."""
    from transform.datasets import synthetic

    config = FunnelConfig(rows=250, seed=1)
    whole = generate(config)
    monkeypatch.setattr(synthetic, "GENERATE_CHUNK_ROWS", 100)
    chunks = list(synthetic.generate_chunks(config))
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert not chunks[0].equals(chunks[1].reset_index(drop=True))   # each chunk its own draw
    chunked = generate(config)
    assert len(chunked) == 250 and not chunked.equals(whole)
    path = synthetic.write_csv(str(tmp_path / "funnel.csv"), config)
    pd.testing.assert_frame_equal(pd.read_csv(path), chunked, check_dtype=False)
    small = FunnelConfig(rows=100, seed=1)
    monkeypatch.setattr(synthetic, "GENERATE_CHUNK_ROWS", 1_000_000)
    single = generate(small)
    monkeypatch.setattr(synthetic, "GENERATE_CHUNK_ROWS", 100)
    pd.testing.assert_frame_equal(generate(small), single)
