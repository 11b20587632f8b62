"""bench/serve_cpu.py's variants name real service settings: a misspelt SERVING_* variable would be ignored by the
service (pydantic-settings reads only the fields it knows) and the bench would time the default twice under two
names."""
from bench.serve_cpu import FIXED, VARIANTS
from serving.settings import Settings


def fields(env: dict[str, str]) -> dict[str, str]:
    assert all(k.startswith("SERVING_") for k in env), env
    return {k.removeprefix("SERVING_").lower(): v for k, v in env.items()}


def test_every_variant_sets_known_settings_to_values_they_accept():
    for name, env in VARIANTS.items():
        values = fields(FIXED | env)
        assert set(values) <= set(Settings.model_fields), f"{name}: {set(values) - set(Settings.model_fields)}"
        settings = Settings(**values)  # each value parses (raises on a bad one)
        for key, value in values.items():
            assert str(getattr(settings, key)).lower() == value.lower(), (name, key)
