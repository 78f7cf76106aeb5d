from django.urls import path

from inference.api import views

urlpatterns = [
    path("models/<str:model_id>/predict", views.PredictApi.as_view(), name="model-predict"),
    path("models/<str:model_id>/health", views.ModelHealthApi.as_view(), name="model-health"),
]
