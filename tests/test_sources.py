"""Sample sources: shapes, distributions, determinism per seed and rank, the pool's size, specs."""

import pytest
import torch
from conftest import TEACHER

from kegnet_pl.data.sources import (
    KegnetGenerators,
    Mixture,
    NormalNoise,
    Pool,
    SampleSource,
    Strokes,
    UniformNoise,
    build_source,
)
from kegnet_pl.errors import CheckpointError, ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bound(source: SampleSource, shape=(1, 32, 32), seed: int = 0) -> SampleSource:
    source.bind(shape, 10, seed)
    return source


def test_noise_sources_follow_their_distribution():
    uniform = bound(UniformNoise()).sample(512, gen(0))
    normal = bound(NormalNoise()).sample(512, gen(0))
    assert uniform.shape == normal.shape == (512, 1, 32, 32)
    assert uniform.min() >= -1 and uniform.max() <= 1 and abs(uniform.mean()) < 0.01
    assert abs(normal.mean()) < 0.01 and abs(normal.std() - 1) < 0.01
    assert bound(UniformNoise(), shape=(64,)).sample(3, gen(0)).shape == (3, 64)


@pytest.mark.parametrize("make", [UniformNoise, NormalNoise])
def test_a_source_is_a_function_of_its_generator(make):
    source = bound(make())
    assert torch.equal(source.sample(8, gen(1)), source.sample(8, gen(1)))
    assert not torch.equal(source.sample(8, gen(1)), source.sample(8, gen(2)))


def test_a_source_must_be_bound_first():
    with pytest.raises(RuntimeError, match="bind"):
        UniformNoise().sample(2, gen(0))


def test_kegnet_generators_take_turns_and_are_frozen(generator_ckpt):
    source = KegnetGenerators(generator_ckpt, label_distribution="uniform")
    x = source.sample(6, gen(0))
    assert x.shape == (6, 1, 32, 32) and torch.equal(x, source.sample(6, gen(0)))
    assert not source.trainable and not any(m.training for frozen in source.generators for m in frozen.modules())
    labels, noise = torch.eye(10)[:4], torch.randn(4, 10)
    out = source.generate(labels, noise)
    k = len(source.generators)
    for i in range(4):  # sample i from generator i % k
        own = source.generators[i % k](labels[i : i + 1], noise[i : i + 1])[0]
        assert torch.allclose(out[i], own, atol=1e-5), i
    assert torch.allclose(source.generate(labels[:1], noise[:1])[0], out[0], atol=1e-5)  # fewer samples than generators
    only_one = KegnetGenerators(generator_ckpt, use_generators=[1])
    assert torch.allclose(
        only_one.generate(labels, noise)[0], source.generators[1](labels[:1], noise[:1])[0], atol=1e-5
    )


def test_kegnet_generators_refuse_another_teacher_and_bad_choices(generator_ckpt):
    with pytest.raises(ConfigError, match=r"trained for a teacher with 10 classes and input shape \(1, 32, 32\)"):
        KegnetGenerators(generator_ckpt).bind((64,), 10)
    with pytest.raises(ConfigError, match=r"use_generators=\[2\] must name generators 0..1"):
        KegnetGenerators(generator_ckpt, use_generators=[2])
    with pytest.raises(CheckpointError, match="is not a GeneratorModule checkpoint"):
        KegnetGenerators(TEACHER)


def test_pool_holds_its_size_and_is_keyed_by_seed_and_rank():
    pool = bound(Pool(NormalNoise(), size=2500), seed=7)
    assert pool.size == 2500 and pool.fill().shape == (2500, 1, 32, 32)  # three chunks, the last one short
    again = bound(Pool(NormalNoise(), size=2500), seed=7)
    assert torch.equal(pool.fill(), again.fill())
    other_seed = bound(Pool(NormalNoise(), size=2500), seed=8)
    assert not torch.equal(pool.fill(), other_seed.fill())
    other_rank = bound(Pool(NormalNoise(), size=2500), seed=7)
    other_rank.set_rank(1)
    assert not torch.equal(pool.fill(), other_rank.fill())
    assert Pool(NormalNoise(), size=10, seed=3).seed == 3  # an explicit seed wins over the stage's


def test_pool_batches_are_members_of_the_pool_and_keyed_by_the_generator():
    pool = bound(Pool(UniformNoise(), size=100))
    members = pool.fill().flatten(1)
    batch = pool.sample(16, gen(0)).flatten(1)
    assert all((members == row).all(1).any() for row in batch)
    assert torch.equal(pool.sample(16, gen(0)), pool.sample(16, gen(0)))
    assert not torch.equal(pool.sample(16, gen(0)), pool.sample(16, gen(1)))
    assert pool.held_out() is pool.source  # validation never sees the pool


def test_pool_refuses_a_non_positive_size():
    with pytest.raises(ConfigError, match="Pool: size must be positive, got 0"):
        Pool(UniformNoise(), size=0)


def test_spec_rebuilds_the_source_without_its_file(generator_ckpt):
    source = bound(Pool(KegnetGenerators(generator_ckpt, use_generators=[1]), size=64), seed=5)
    rebuilt = build_source(source.spec())
    rebuilt.load_state_dict(source.state_dict())
    rebuilt.bind((1, 32, 32), 10, seed=0)
    assert rebuilt.seed == 5 and rebuilt.size == 64 and rebuilt.source.use_generators == [1]
    assert torch.equal(rebuilt.fill(), source.fill())


def test_build_source_imports_nothing_a_checkpoint_names():
    with pytest.raises(CheckpointError, match="is not an imported SampleSource"):
        build_source({"class_path": "os.system", "init_args": {}})


def test_mixture_takes_each_share_of_a_batch_in_order(generator_ckpt):
    source = bound(Mixture([KegnetGenerators(generator_ckpt), UniformNoise()], [0.75, 0.25]))
    assert source.counts(256) == [192, 64] and source.counts(3) == [2, 1] and sum(source.counts(7)) == 7
    batch = source.sample(8, gen(3))
    assert batch.shape == (8, 1, 32, 32) and torch.equal(batch, source.sample(8, gen(3)))
    g = gen(3)  # the parts are the sources' own samples, drawn in turn with the one generator
    expected = torch.cat([source.sources[0].sample(6, g), source.sources[1].sample(2, g)])
    assert torch.equal(batch, expected)
    assert batch[6:].abs().max() <= 1  # the noise part is U(-1, 1)


def test_mixture_spec_rebuilds_it_with_nested_sources(generator_ckpt):
    source = bound(Pool(Mixture([KegnetGenerators(generator_ckpt), UniformNoise()], [0.5, 0.5]), size=32), seed=2)
    rebuilt = build_source(source.spec())
    rebuilt.load_state_dict(source.state_dict())
    rebuilt.bind((1, 32, 32), 10, seed=0)
    assert isinstance(rebuilt.source, Mixture) and rebuilt.source.fractions == [0.5, 0.5]
    assert torch.equal(rebuilt.fill(), source.fill())


@pytest.mark.parametrize("fractions", [[0.5], [0.7, 0.7], [-0.5, 1.5]])
def test_mixture_refuses_shares_that_do_not_sum_to_one(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        Mixture([UniformNoise(), NormalNoise()], fractions)


def test_strokes_draw_ink_on_blank_paper_and_nothing_else():
    x = bound(Strokes(background=-0.5, ink=2.5), shape=(3, 32, 32)).sample(64, gen(0))
    assert x.shape == (64, 3, 32, 32)
    assert x.min() == -0.5 and x.max() == 2.5  # every value lies between paper and ink
    assert torch.equal(x[:, 0], x[:, 2])  # every channel alike
    ink = (x[:, 0] > -0.5).flatten(1).float().mean(1)
    assert ink.min() > 0 and ink.max() < 0.5  # every image has a stroke; strokes are thin marks, not fills
    border = torch.ones(32, 32, dtype=torch.bool)
    border[3:29, 3:29] = False
    assert (x[:, 0][:, border] == -0.5).all()  # end points keep to the middle 20 to 80% (plus the stroke's width)
    x1 = bound(Strokes(max_strokes=1, width=(0.0, 0.0))).sample(256, gen(1))
    thin = (x1 > -1).flatten(1).sum(1)  # one stroke of the narrowest width: a line one or two pixels across
    assert thin.max() < 32 * 2.5


def test_strokes_are_a_function_of_the_generator_and_rebuild_from_their_spec():
    source = bound(Strokes(background=-0.42, ink=2.82, max_strokes=2, width=(1.0, 2.0), span=(0.1, 0.9)))
    assert torch.equal(source.sample(8, gen(1)), source.sample(8, gen(1)))
    assert not torch.equal(source.sample(8, gen(1)), source.sample(8, gen(2)))
    rebuilt = bound(build_source(source.spec()))
    assert torch.equal(rebuilt.sample(8, gen(4)), source.sample(8, gen(4)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_strokes": 0}, "max_strokes"), ({"width": (2.0, 1.0)}, "width"), ({"span": (0.5, 0.5)}, "span")],
)
def test_strokes_refuse_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Strokes(**kwargs)


def test_strokes_refuse_inputs_that_are_not_images():
    with pytest.raises(ConfigError, match="draws images"):
        bound(Strokes(), shape=(64,))
