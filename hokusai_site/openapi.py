from drf_spectacular.openapi import AutoSchema


class HokusaiAutoSchema(AutoSchema):
    """Names components after their view for the nested `InputSerializer`/`OutputSerializer`
    classes our views use (`HealthApi.OutputSerializer` → `HealthOutput`), which would
    otherwise all be called `Output` and collide."""

    def get_serializer_name(self, serializer, direction):
        qualified = type(serializer).__qualname__
        if "." not in qualified:
            return super().get_serializer_name(serializer, direction)
        view_name, _, nested = qualified.rpartition(".")
        return view_name.removesuffix("Api").replace(".", "") + nested
