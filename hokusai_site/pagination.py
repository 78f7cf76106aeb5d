from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response


class BoundedPageNumberPagination(PageNumberPagination):
    """`?page=N&page_size=M`, with the page size capped so one call cannot fetch a whole table."""

    page_size_query_param = "page_size"
    max_page_size = 200


def paginated_response(request, view, items, render) -> Response:
    """One page of `items` as `{count, next, previous, results}`; `render` turns the page's
    items into the results."""
    paginator = BoundedPageNumberPagination()
    page = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(render(page))
