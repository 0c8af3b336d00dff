fn main() {
    for crd in api::v1alpha1::crds() {
        println!("---\n{}", serde_yaml::to_string(&crd).unwrap());
    }
}
