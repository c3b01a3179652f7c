# Delayed events in the outbox (homing_outbox.deliver_at, as the SQL outbox has it) and the
# run_after of a deferred task.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("homing", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxentry",
            name="deliver_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.AddField(
            model_name="taskrecord",
            name="run_after",
            field=models.DateTimeField(null=True),
        ),
    ]
