from django.db import migrations

OLD_DEFAULT = 120.0
AIRLLM_DEFAULT = 1800.0


def longer_airllm_timeout(apps, schema_editor):
    # An airllm row made before AirLLM ran for real kept the general 120 s, too short for a large model's answer;
    # a timeout an operator chose is left alone.
    Provider = apps.get_model("providers", "Provider")
    Provider.objects.filter(kind="airllm", read_timeout_seconds=OLD_DEFAULT).update(read_timeout_seconds=AIRLLM_DEFAULT)


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0006_bad_request_error_class"),
    ]

    operations = [
        migrations.RunPython(longer_airllm_timeout, migrations.RunPython.noop),
    ]
