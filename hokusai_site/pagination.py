from rest_framework.pagination import PageNumberPagination


class BoundedPageNumberPagination(PageNumberPagination):
    """`?page=N&page_size=M`, with the page size capped so one call cannot fetch a whole table."""

    page_size_query_param = "page_size"
    max_page_size = 200
