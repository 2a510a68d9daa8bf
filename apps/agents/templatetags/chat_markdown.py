from django import template
from django.utils.safestring import SafeString

from apps.agents.markdown import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown(text: str) -> SafeString:
    return render_markdown(text)
