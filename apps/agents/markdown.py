"""Timmy's replies as HTML: Markdown rendered with raw HTML switched off, then cleaned to a short list of tags.

A model's reply is untrusted text (it can repeat whatever a prompt or a memory put in front of it). markdown-it
escapes any HTML in it and refuses javascript:/vbscript:/data: links; nh3 then keeps only the tags and attributes
below, so even a renderer bug cannot let a script, an event handler or a remote image (a request leaving the
machine) through.
"""

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

TAGS = frozenset(
    {
        "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote",
        "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
        "a", "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})

# "breaks": a single newline in a reply is a line break, as the model meant it (chat replies are not prose
# wrapped at 72 columns). Tables and ~~strikethrough~~ as models write them.
_parser = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


def render_markdown(text: str) -> SafeString:
    html = nh3.clean(
        _parser.render(text),
        tags=set(TAGS),
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(html)  # noqa: S308 (cleaned by nh3 just above)
