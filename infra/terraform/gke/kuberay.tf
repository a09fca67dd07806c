# The KubeRay operator (RayService controller, in-tree Ray autoscaler support), pinned.
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay-system"
  create_namespace = true
  wait             = true

  depends_on = [google_container_node_pool.cpu]
}
