from django.db import migrations

# The persona agents. Their bids: base when a task matches a keyword, base x 3 otherwise, ± jitter.
PERSONAS = [
    {
        "name": "timmy",
        "persona": "timmy",
        "description": "The sovereign agent himself: chats, orchestrates the swarm, does not bid.",
        "capabilities": ["chat", "orchestration", "memory"],
        "keywords": [],
        "base_bid_sats": 0,
        "bid_jitter_sats": 0,
        "bids_on_tasks": False,
    },
    {
        "name": "echo",
        "persona": "echo",
        "description": "Research: finds, reads and summarises sources.",
        "capabilities": ["research", "summarization", "web_search", "memory_search"],
        "keywords": ["research", "find", "search", "summar", "investigat", "compare", "source", "look up", "learn"],
        "base_bid_sats": 80,
        "bid_jitter_sats": 10,
    },
    {
        "name": "forge",
        "persona": "forge",
        "description": "Code: writes, fixes and reviews code.",
        "capabilities": ["coding", "refactoring", "debugging", "code_review"],
        "keywords": ["code", "bug", "fix", "implement", "refactor", "function", "python", "test", "program", "script"],
        "base_bid_sats": 120,
        "bid_jitter_sats": 15,
    },
    {
        "name": "seer",
        "persona": "seer",
        "description": "Analytics: numbers, trends, forecasts and charts.",
        "capabilities": ["analytics", "statistics", "forecasting", "visualization"],
        "keywords": ["analy", "data", "statistic", "trend", "forecast", "metric", "chart", "predict", "measure"],
        "base_bid_sats": 100,
        "bid_jitter_sats": 12,
    },
    {
        "name": "quill",
        "persona": "quill",
        "description": "Writing: drafts, edits and documents.",
        "capabilities": ["writing", "editing", "documentation"],
        "keywords": ["write", "draft", "edit", "document", "blog", "essay", "email", "story", "copy", "readme"],
        "base_bid_sats": 70,
        "bid_jitter_sats": 8,
    },
    {
        "name": "helm",
        "persona": "helm",
        "description": "DevOps: deploys, monitors and keeps services running.",
        "capabilities": ["devops", "deployment", "monitoring", "infrastructure"],
        "keywords": [
            "deploy",
            "server",
            "docker",
            "monitor",
            "infra",
            "pipeline",
            "backup",
            "restart",
            "config",
            "uptime",
        ],
        "base_bid_sats": 110,
        "bid_jitter_sats": 12,
    },
    {
        "name": "mace",
        "persona": "mace",
        "description": "Security: audits, hardens and reviews for vulnerabilities.",
        "capabilities": ["security", "audit", "threat_modeling"],
        "keywords": ["secur", "vulnerab", "audit", "attack", "threat", "harden", "exploit", "password", "encrypt"],
        "base_bid_sats": 130,
        "bid_jitter_sats": 15,
    },
]


def load_personas(apps, schema_editor):
    Agent = apps.get_model("swarm", "Agent")
    for persona in PERSONAS:
        Agent.objects.update_or_create(name=persona["name"], defaults={**persona, "status": "offline"})


def unload_personas(apps, schema_editor):
    Agent = apps.get_model("swarm", "Agent")
    Agent.objects.filter(name__in=[p["name"] for p in PERSONAS], bids__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("swarm", "0001_initial")]

    operations = [migrations.RunPython(load_personas, unload_personas)]
