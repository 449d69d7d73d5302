from setuptools import find_packages, setup

setup(
    name='mmeff',
    version='0.1.0',
    description='EfficientFormer (L1/L3/L7) as an OpenMMLab 2.x backbone for mmdet 3.x and mmseg 1.x',
    packages=find_packages(include=['mmeff', 'mmeff.*']),
    python_requires='>=3.10',
    install_requires=['torch', 'mmengine>=0.10.0', 'timm'],
    extras_require={'dense': ['mmdet>=3.3.0', 'mmsegmentation>=1.2.2']},
)
