from django.apps import AppConfig


class AuthkeysConfig(AppConfig):
    name = "authkeys"
