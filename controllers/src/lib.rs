pub mod debian;
