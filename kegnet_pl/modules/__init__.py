"""The LightningModules: one per stage of KegNet."""

from kegnet_pl.modules.generator import GeneratorModule
from kegnet_pl.modules.student import StudentModule
from kegnet_pl.modules.teacher import TeacherModule

__all__ = ["GeneratorModule", "StudentModule", "TeacherModule"]
