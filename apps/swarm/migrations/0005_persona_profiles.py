"""Each persona's profile: what it does and its typical tasks, which tasks are matched with by meaning (issue 17).

Also the keywords of 0002 as whole words (they are part of the profile now, not substrings): "summar" reads as
"summarise". Only what still has 0002's value is changed, so that an operator's edits in the admin stay.
"""

from django.db import migrations

PROFILES = {
    "echo": """\
Echo is the researcher: it finds, reads and compares sources and reports what they say, with references.
Typical tasks:
- Research a topic and write a briefing with sources
- Find out what is known about a question, and who says so
- Summarise a long article, paper, report or discussion into its key points
- Compare several products, tools or approaches from their documentation and reviews
- Do a literature review of recent papers on a subject
- Put together a reading list on a subject
- Fact-check a claim and cite where the answer comes from
- Look up a historical fact, a date, or who invented or discovered something
- Collect the news and opinions about a subject from several websites
- Explain the history and the ideas of a movement, a technology or a protocol
- Find the original specification or announcement and say what changed since
- Find out what laws, regulations or policies apply to a situation, and in which countries""",
    "forge": """\
Forge is the programmer: it writes and changes source code in Python, JavaScript, SQL or shell.
Typical tasks:
- Write a Python function, a class or a module that does something specific
- Write a small program or a command-line script that processes files
- Implement a feature or an option in the code base, its API or its command-line tool
- Implement an algorithm or a data structure: sorting, searching, parsing, a linked list or a tree
- Write a regular expression or a parser
- Fix a bug, a crash, an exception or a failing test in the code
- Explain a stack trace or an error message and fix its cause
- Write unit tests for a module
- Refactor code to make it simpler or faster; add type hints and make the type checker pass
- Review a pull request or a diff
- Port code to another programming language, framework or library version
- Make a client or a library handle errors, timeouts and retries""",
    "seer": """\
Seer is the analyst: it works with numbers, data sets, metrics and logs.
Typical tasks:
- Find the trend or the outliers in a data set
- Compute averages, medians, percentiles and other statistics
- Forecast costs, usage or growth from past figures, and project when a limit will be reached
- Test whether a difference between two groups or two periods is statistically significant
- Quantify how much a metric changed after an event
- Break figures down by category, period or customer, and count them in a table with percentages
- Draw a chart, a plot or a dashboard of a metric over time
- Find what correlates with a change in a metric
- Group records into clusters or segments and count each
- Answer how many, how often, and what it will be next month""",
    "quill": """\
Quill is the writer: it writes prose for people to read, and edits it.
Typical tasks:
- Write a blog post or an article on a subject
- Draft an email, a letter, a note or an announcement
- Write release notes, a user guide, an FAQ or a README
- Edit a text for clarity, tone and grammar; polish its wording
- Proofread a document
- Write a story, a poem, a haiku or the text of a speech or a talk
- Write marketing copy, a product description or social media posts
- Rewrite a text for another audience, shorter, friendlier or simpler
- Turn notes or bullet points into well-written paragraphs
- Write a cover letter, a biography or a welcome message""",
    "helm": """\
Helm is the operator: it keeps the servers and services running.
Typical tasks:
- Deploy a release or a container image to a server, or roll a deployment back
- Restart a service that has stopped or hangs
- Install and configure a service such as a database, Redis or a web server, and start it on boot
- Set up backups of a database or files, keep copies, and test a restore
- Renew TLS certificates and configure nginx, DNS or a reverse proxy
- Set up monitoring, alerts and log rotation
- Write a systemd unit, a Dockerfile, a cron job or a CI/CD pipeline
- Upgrade the operating system or packages of a machine
- Manage disks, volumes and mounts; free up disk space; prune old images
- Move services to a new machine, keep staging like production, keep uptime high""",
    "mace": """\
Mace is the security specialist: it looks for what an attacker could exploit, and closes it.
Typical tasks:
- Audit a feature, a page or an API for vulnerabilities
- Look for injection, cross-site scripting, CSRF and path traversal flaws
- Review authentication, sessions, tokens and how passwords are stored
- Check TLS configuration, ciphers and protocol versions
- Scan dependencies for known CVEs
- Find leaked secrets, API keys and credentials, and rotate them
- Threat-model a system: who could attack it, and how
- Try to bypass a payment, a permission check or a sandbox, as an attacker would
- Set security headers such as a content security policy
- Harden SSH, a firewall or a server; investigate a suspicious login or a breach""",
}

# name: (0002's keywords, as whole words); Forge's and Quill's were whole words already.
KEYWORDS = {
    "echo": (
        ["research", "find", "search", "summar", "investigat", "compare", "source", "look up", "learn"],
        ["research", "find", "search", "summarise", "investigate", "compare", "sources", "look up", "learn"],
    ),
    "seer": (
        ["analy", "data", "statistic", "trend", "forecast", "metric", "chart", "predict", "measure"],
        ["analysis", "data", "statistics", "trend", "forecast", "metrics", "chart", "predict", "measure"],
    ),
    "helm": (
        ["deploy", "server", "docker", "monitor", "infra", "pipeline", "backup", "restart", "config", "uptime"],
        [
            "deploy",
            "server",
            "docker",
            "monitor",
            "infrastructure",
            "pipeline",
            "backup",
            "restart",
            "config",
            "uptime",
        ],
    ),
    "mace": (
        ["secur", "vulnerab", "audit", "attack", "threat", "harden", "exploit", "password", "encrypt"],
        ["security", "vulnerability", "audit", "attack", "threat", "harden", "exploit", "password", "encrypt"],
    ),
}


def write_profiles(apps, schema_editor):
    Agent = apps.get_model("swarm", "Agent")
    for name, profile in PROFILES.items():
        Agent.objects.filter(name=name, profile="").update(profile=profile)
    for name, (old, new) in KEYWORDS.items():
        for agent in Agent.objects.filter(name=name):
            if agent.keywords == old:
                agent.keywords = new
                agent.save(update_fields=["keywords"])


def clear_profiles(apps, schema_editor):
    Agent = apps.get_model("swarm", "Agent")
    for name, profile in PROFILES.items():
        Agent.objects.filter(name=name, profile=profile).update(profile="")
    for name, (old, new) in KEYWORDS.items():
        for agent in Agent.objects.filter(name=name):
            if agent.keywords == new:
                agent.keywords = old
                agent.save(update_fields=["keywords"])


class Migration(migrations.Migration):
    dependencies = [("swarm", "0004_agent_profile_bid_match")]

    operations = [migrations.RunPython(write_profiles, clear_profiles)]
