"""Ray Serve deployments: one ModalityDeployment bound per service (text, vision, audio)."""
