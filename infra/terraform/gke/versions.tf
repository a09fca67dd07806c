terraform {
  required_version = ">= 1.6"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.40"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

# Installs the KubeRay operator into the new cluster (kuberay.tf).
provider "helm" {
  kubernetes {
    host                   = "https://${google_container_cluster.gemma.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(google_container_cluster.gemma.master_auth[0].cluster_ca_certificate)
  }
}
