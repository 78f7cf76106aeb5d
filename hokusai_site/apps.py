from django.apps import AppConfig


class HokusaiSiteConfig(AppConfig):
    name = "hokusai_site"
    verbose_name = "Platform"
